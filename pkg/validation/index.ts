// The API's input rules (limits, name and label syntax, text checks), shared by the server that
// enforces them, the ctl, and the web UI's forms. Browser-safe: no Node-only imports.
export {
  checkCount,
  checkDisk,
  checkLabelKey,
  checkLabels,
  checkLabelValue,
  checkMemory,
  checkName,
  checkSize,
  checkStopTimeout,
  checkTailBytes,
  checkText,
  checkTextList,
  checkTextMap,
  checkVcpus,
  CONFIG_KEY_RE,
  CONFIG_KEY_RULE,
  ENV_KEY_RE,
  ENV_KEY_RULE,
  LABEL_KEY_RE,
  LABEL_VALUE_RE,
  LIMITS,
  NAME_RE,
  parseLabels,
  show,
} from "./rules.js";
export { isLoopbackHost, issuerProblem } from "./issuer.js";
