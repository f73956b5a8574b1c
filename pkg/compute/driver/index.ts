// The contract between the agent and a runtime, its typed errors, and the conformance suite
// every driver runs against its real runtime.
export type {
  Capabilities,
  ConsoleDriver,
  ConsoleEndpoint,
  BalloonDriver,
  Driver,
  DriverEvent,
  DriverInstance,
  DriverInstanceSpec,
  DriverState,
  Fingerprint,
  InstanceStats,
  Signalled,
  StatsDriver,
} from "./driver.js";
export { hasBalloon, hasConsole, hasStats } from "./driver.js";
export { DriverError, InstanceNotFoundError, InvalidSpecError, StartError } from "./errors.js";
