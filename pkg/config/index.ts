// Configuration shared by the server and the agent: a declarative schema per setting, YAML files
// with unknown keys rejected, then HYPERVISOR_* environment variables, then flags.
export {
  camelCase,
  ConfigError,
  envName,
  loadConfig,
  parseFlags,
  parseYaml,
  usage,
  type CamelCase,
  type ConfigOf,
  type Field,
  type FieldType,
  type Loaded,
  type LoadOptions,
  type Schema,
  type Source,
} from "./load.js";
