/*
 * Secret environment values are write-only: a create takes them, the store keeps them for the
 * node that runs the instance, and no API answer carries them.
 *
 *   CreateInstance{spec.secret_env} ──► store (assignment: the agent merges it into env)
 *   any answer ──redact()──► every Instance in a top-level field, spec.secret_env values "(redacted)"
 *
 * redact() works on the response's top-level fields of type Instance (single or repeated), which
 * is where every method that returns instances puts them, so a new method is covered by its shape.
 * It copies what it changes: the objects it is given may be the informers' shared copies.
 */
import type { DescMessage, Message } from "@bufbuild/protobuf";
import { type Instance, InstanceSchema } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { ENV_KEY_RE, LIMITS } from "../../pkg/validation/index.js";
import { invalid, show } from "./validate.js";

export const REDACTED = "(redacted)";
const MAX_ENTRIES = LIMITS.maxMapEntries;
const MAX_VALUE_BYTES = LIMITS.maxStringBytes;

export function validateSecretEnv(field: string, secret: Record<string, string>, env: Record<string, string>): void {
  const entries = Object.entries(secret);
  if (entries.length > MAX_ENTRIES) throw invalid(field, `has ${entries.length} entries; at most ${MAX_ENTRIES} allowed`);
  for (const [k, v] of entries) {
    if (!ENV_KEY_RE.test(k)) throw invalid(`${field}[${show(k)}]`, `${show(k)} is not an environment variable name`);
    if (k in env) throw invalid(`${field}[${show(k)}]`, `${show(k)} is also in spec.env; name each variable once`);
    if (Buffer.byteLength(v) > MAX_VALUE_BYTES) throw invalid(`${field}[${show(k)}]`, `the value is over ${MAX_VALUE_BYTES} bytes`);
  }
}

function redactInstance(i: Instance): Instance {
  const secret = i.spec?.secretEnv;
  if (!secret || Object.keys(secret).length === 0) return i;
  const hidden = Object.fromEntries(Object.keys(secret).map((k) => [k, REDACTED]));
  return { ...i, spec: { ...i.spec!, secretEnv: hidden } };
}

/** The message with every top-level Instance's secret values redacted (copied where changed). */
export function redact<T extends Message>(schema: DescMessage, message: T): T {
  let out: T | undefined;
  for (const f of schema.fields) {
    const isInstance = f.message?.typeName === InstanceSchema.typeName;
    if (!isInstance || (f.fieldKind !== "message" && !(f.fieldKind === "list" && f.listKind === "message"))) continue;
    const v = (message as Record<string, unknown>)[f.localName];
    if (v === undefined) continue;
    const next = Array.isArray(v) ? (v as Instance[]).map(redactInstance) : redactInstance(v as Instance);
    const changed = Array.isArray(v) ? (next as Instance[]).some((x, n) => x !== (v as Instance[])[n]) : next !== v;
    if (!changed) continue;
    out ??= { ...message };
    (out as Record<string, unknown>)[f.localName] = next;
  }
  return out ?? message;
}
