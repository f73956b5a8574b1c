/*
 * `instance create -f`: a YAML (or JSON, which is YAML) file shaped like CreateInstanceRequest in
 * protobuf JSON: {name, labels, spec: {driver, image, vcpus, memoryMib, ...}}. Field names may be
 * camelCase or the proto's snake_case. Unknown fields are errors: a misspelt "memmoryMib" that
 * silently became 0 would be worse than a refusal. Errors name the file and the field's path.
 */
import { readFile } from "node:fs/promises";
import { fromJson, type DescEnum, type DescMessage, type JsonValue } from "@bufbuild/protobuf";
import YAML from "yaml";
import { CreateInstanceRequestSchema, type CreateInstanceRequest } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { usageError } from "./errors.js";

export async function readSpecFile(path: string, signal?: AbortSignal): Promise<CreateInstanceRequest> {
  let text: string;
  try {
    text = await readFile(path, { encoding: "utf8", signal });
  } catch (e) {
    if (signal?.aborted) throw e;
    throw usageError(`cannot read spec file ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  return parseSpec(text, path);
}

/** Parses and checks a spec; `source` names the file in error messages. */
export function parseSpec(text: string, source: string): CreateInstanceRequest {
  let doc: unknown;
  try {
    // YAML 1.2 core schema: "on"/"yes" stay strings and nothing becomes a Date.
    doc = YAML.parse(text, { uniqueKeys: true });
  } catch (e) {
    throw usageError(`${source}: invalid YAML: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`);
  }
  if (doc === null || doc === undefined) throw usageError(`${source}: the file is empty`);
  const json = checkMessage(CreateInstanceRequestSchema, doc, "", source);
  try {
    return fromJson(CreateInstanceRequestSchema, json, { ignoreUnknownFields: false });
  } catch (e) {
    // checkMessage tries every field, so this is a safety net, not the usual path.
    throw usageError(`${source}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

function kindOf(v: unknown): string {
  return v === null ? "null" : Array.isArray(v) ? "a list" : typeof v === "object" ? "a mapping" : `${typeof v} ${JSON.stringify(v)}`;
}

function isMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Walks the document against the schema so errors carry a path ("spec.vcpus") where fromJson
 * would only name the message type, and so enum values may be written short ("always").
 */
function checkMessage(desc: DescMessage, value: unknown, path: string, source: string): JsonValue {
  const where = path || "the top level";
  if (!isMapping(value)) throw usageError(`${source}: ${where}: expected a mapping, got ${kindOf(value)}`);
  const out: Record<string, JsonValue> = {};
  for (const [key, v] of Object.entries(value)) {
    const p = path ? `${path}.${key}` : key;
    const field = desc.fields.find((f) => f.jsonName === key || f.name === key);
    if (!field) {
      const known = desc.fields.map((f) => f.jsonName).join(", ");
      throw usageError(`${source}: unknown field "${p}" (${desc.name} fields: ${known})`);
    }
    if (field.fieldKind === "message" && !field.message.typeName.startsWith("google.protobuf.") && v !== null) {
      out[key] = checkMessage(field.message, v, p, source);
      continue;
    }
    if (field.fieldKind === "list" && field.listKind === "message" && Array.isArray(v)) {
      const element = field.message;
      out[key] = v.map((e, i) => checkMessage(element, e, `${p}[${i}]`, source));
      continue;
    }
    out[key] = field.fieldKind === "enum" && typeof v === "string" ? enumName(field.enum, v, p, source) : (v as JsonValue);
    checkField(desc, key, out[key], p, source);
  }
  return out;
}

/** Decodes the one field alone, to turn fromJson's message into "<path>: <reason>". */
function checkField(desc: DescMessage, key: string, value: JsonValue, path: string, source: string): void {
  try {
    fromJson(desc, { [key]: value }, { ignoreUnknownFields: false });
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    const reason = msg.replace(/^.*? from JSON: /, "");
    const entry = /^map entry "(.*?)": (.*)$/.exec(reason);
    const hint = /expected string, got (-?\d|true|false)/.test(reason) ? " (quote it in YAML)" : "";
    throw usageError(entry ? `${source}: ${path}.${entry[1]}: ${entry[2]}${hint}` : `${source}: ${path}: ${reason}${hint}`);
  }
}

/** Accepts "RESTART_POLICY_ALWAYS" (protobuf JSON), "ALWAYS", "always", "on-failure" and "OnFailure". */
function enumName(desc: DescEnum, value: string, path: string, source: string): string {
  const prefix = (desc.sharedPrefix ?? "").toUpperCase();
  const wanted = value.toUpperCase().replace(/-/g, "_");
  // "NotIn", "not-in" and "notin" all name NOT_IN; "NoSchedule" names NO_SCHEDULE.
  const bare = (n: string) => n.replace(/_/g, "");
  const hit = desc.values.find(
    (v) => v.name === value || v.name === wanted || v.name === prefix + wanted || bare(v.name) === bare(prefix + wanted),
  );
  if (hit && hit.number !== 0) return hit.name;
  const names = desc.values.filter((v) => v.number !== 0).map((v) => v.name.slice(prefix.length).toLowerCase().replace(/_/g, "-"));
  throw usageError(`${source}: ${path}: unknown value "${value}" (one of ${names.join(", ")})`);
}
