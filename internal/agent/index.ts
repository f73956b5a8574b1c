// The node agent: registers the node, heartbeats, adopts what its drivers already run, and
// reconciles the instances assigned to it through a work queue. Used in-process (--dev, tests)
// and by cmd/hypervisor-agent.
export { Agent, AgentError, type AdoptionReport, type AgentOptions } from "./agent.js";
export {
  agentSchema,
  buildDrivers,
  deadlinesOf,
  defaultNodeName,
  DRIVER_DEFAULTS,
  parseTaints,
  SUPPORTED_DRIVERS,
  type AgentConfig,
  type DriverSettings,
  type TaintSetting,
} from "./config.js";
export {
  DeadlineDriver,
  DeadlineExceededError,
  DEFAULT_DEADLINES,
  DEFAULT_MAX_STOP_TIMEOUT_MS,
  underDeadline,
  type OperationDeadlines,
} from "./deadlines.js";
export { StopSupersededError } from "./stops.js";
export { AGENT_VERSION, fingerprintNode, type Capacity, type NodeFingerprintOptions } from "./fingerprint.js";
export {
  Reconciler,
  RESTART_LABEL,
  STOP_TIMEOUT_LABEL,
  StatusConflictError,
  statusOf,
  toDriverSpec,
  type ReconcilerOptions,
} from "./reconcile.js";
export { TerminalError, WorkQueue, type ProcessResult, type Processor, type WorkQueueOptions } from "./workqueue.js";
export { agentService, MAX_IMAGE_BYTES, type AgentServiceOptions, type AgentServiceSource, type NodeImage } from "./agent-service.js";
export { AgentEndpoint, ENDPOINT_READ_MAX_BYTES, type EndpointOptions, type EndpointTls } from "./endpoint.js";
