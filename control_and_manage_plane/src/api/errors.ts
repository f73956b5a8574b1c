// Server refusals, read for people: the API's InvalidArgument messages start with the field they
// are about (`name: ...`, `spec.vcpus: ...`, `labels["k"]: ...`, see internal/server/validate.ts),
// which is how a form puts the message next to the input that caused it.
import { Code, ConnectError } from "@connectrpc/connect";

/** The server's own words (no "[invalid_argument]" prefix). */
export function errorText(e: unknown): string {
  return ConnectError.from(e).rawMessage;
}

export function errorCode(e: unknown): Code {
  return ConnectError.from(e).code;
}

export function isCode(e: unknown, code: Code): boolean {
  return ConnectError.from(e).code === code;
}

// `path` or `path[index]` or `path["key"]`, then ": ".
const FIELD_PREFIX = /^([a-z_]+(?:\.[a-z_]+)*)(?:\[(?:"(?:[^"\\]|\\.)*"|\d+)\])?: /;

const BATCH_ELEMENT = /^instances\[\d+\]\./;

/** The API field path a message is about ("spec.memory_mib"), or undefined when it names none. */
export function fieldPath(message: string): string | undefined {
  return FIELD_PREFIX.exec(message)?.[1];
}

/**
 * The form field a server error belongs to, from `fields` (API path → form field; a path also
 * matches its children, so "spec.command" covers "spec.command[2]"). AlreadyExists is about the name.
 * A batch's "instances[3].spec.vcpus: ..." is about the same field as "spec.vcpus: ...": one form
 * made every instance of the batch.
 */
export function fieldOfError<F extends string>(e: unknown, fields: Record<string, F>, nameField: F): F | undefined {
  const err = ConnectError.from(e);
  if (err.code === Code.AlreadyExists) return nameField;
  let path = fieldPath(err.rawMessage.replace(BATCH_ELEMENT, ""));
  while (path) {
    const f = fields[path];
    if (f) return f;
    const dot = path.lastIndexOf(".");
    path = dot > 0 ? path.slice(0, dot) : undefined;
  }
  return undefined;
}

export { Code };
