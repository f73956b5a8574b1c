// hypervisor-ctl, the command-line client of the API: `run` is the whole CLI as a function
// (argv and an Io in, exit code out) so cmd/hypervisor-ctl stays thin and tests run it in-process.
// Exit codes are part of the interface and documented in docs/cli.md.
export { run, buildProgram, PROGRAM } from "./cli.js";
export type { Context, Io, Writer } from "./context.js";
export { ExitCode, CliError, describeError } from "./errors.js";
export { createClients, DEFAULT_SERVER, type Clients } from "./client.js";
// The configuration file, for setup steps that write a context (a dev server's own credentials).
export {
  ConfigFileError,
  configLocation,
  parseConfig,
  formatConfig,
  readConfig,
  writeConfig,
  saveContext,
  type ConfigLocation,
  type ContextEntry,
  type Credentials,
  type CtlConfig,
} from "./config-file.js";
export { resolveConnection, loadTls, type Connection, type ConnectionFlags, type TlsMaterial } from "./connection.js";
export { parseSpec, readSpecFile } from "./spec-file.js";
export { commandTree, bashScript, zshScript, SHELLS, type Shell, type Tree } from "./completion.js";
export { clientVersion } from "./cluster.js";
