// The contract between the agent and a runtime, its typed errors, and the conformance suite
// every driver runs against its real runtime, and the registry of the drivers there are.
export type {
  Capabilities,
  ConsoleDriver,
  ConsoleEndpoint,
  ConsoleKind,
  BalloonDriver,
  Driver,
  DriverEvent,
  DriverImage,
  DriverInstance,
  DriverInstanceSpec,
  DriverState,
  Fingerprint,
  ImageDriver,
  InstanceStats,
  LogsDriver,
  Signalled,
  StatsDriver,
} from "./driver.js";
export { hasBalloon, hasConsole, hasImages, hasLogs, hasStats } from "./driver.js";
export { lookAgain } from "./look-again.js";
export { DriverError, InstanceNotFoundError, InvalidSpecError, StartError } from "./errors.js";
export {
  DENY_ALL,
  hostAccessError,
  hostAccessRefusal,
  hostAccessRequest,
  restrictedRefusal,
  type HostAccessPolicy,
  type HostAccessRequest,
} from "./host-access.js";
export {
  BRIDGE_NAME_RE,
  checkDriverSpec,
  DRIVER_NAMES,
  DRIVER_REGISTRY,
  driverEntry,
  DURATION_RE,
  SPEC_FIELDS,
  type ConfigKey,
  type DriverEntry,
  type DriverName,
  type SpecField,
  type SpecProblem,
  type SpecShape,
} from "./registry.js";
export { keepsLocalDisk, pinnedBy, type DiskFacts } from "./disks.js";
