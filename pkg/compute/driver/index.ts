// The contract between the agent and a runtime, its typed errors, and the conformance suite
// every driver runs against its real runtime.
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
export { keepsLocalDisk, pinnedBy, type DiskFacts } from "./disks.js";
