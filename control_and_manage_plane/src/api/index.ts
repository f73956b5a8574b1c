// The browser's side of the API: Connect clients to the serving server, the server's validation
// rules mirrored for forms, its refusals mapped to form fields, and how API values read on screen.
export {
  accessClient,
  auditClient,
  clusterClient,
  consoleClient,
  imageClient,
  instanceClient,
  nodeClient,
  projectClient,
  transport,
} from "./clients.js";
export { listDrivers } from "./drivers.js";
export { Code, errorCode, errorText, fieldOfError, fieldPath, isCode } from "./errors.js";
export {
  ago,
  clock,
  conditionName,
  instanceState,
  isTransitional,
  labelText,
  mib,
  nodeReady,
  PHASES,
  phaseFromKey,
  phaseName,
  phaseTone,
  toDate,
  type Tone,
} from "./format.js";
export {
  checkCount,
  checkMemory,
  checkName,
  checkText,
  checkVcpus,
  LIMITS,
  MAX_COUNT,
  parseLabels,
  parseSelector,
  show,
  splitCommand,
} from "./validate.js";
