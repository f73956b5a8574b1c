/** Typed driver errors. The agent maps them to instance phases and messages. */

export class DriverError extends Error {
  override name = "DriverError";
}

/** The instance does not exist in the runtime. */
export class InstanceNotFoundError extends DriverError {
  override name = "InstanceNotFoundError";
  constructor(readonly instance: string) {
    super(`instance ${instance} not found`);
  }
}

/** The spec cannot run on this driver; retrying will not help. */
export class InvalidSpecError extends DriverError {
  override name = "InvalidSpecError";
}

/** Starting failed; the message carries the runtime's reason. */
export class StartError extends DriverError {
  override name = "StartError";
}
