/*
 * google.protobuf.Any the way containerd's typeurl package fills it, which is not protobuf's usual
 * way:
 *
 *   OCI runtime types (registered)  type_url "types.containerd.io/opencontainers/runtime-spec/1/Spec"
 *                                   value    UTF-8 JSON of the runtime-spec object
 *   protobuf messages (unregistered) type_url the full message name, e.g. "containerd.events.TaskExit"
 *                                   value    protobuf bytes    (no "type.googleapis.com/" prefix)
 *
 * protobuf-es's anyPack adds the googleapis prefix, so it is not used for containerd's Anys.
 */
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { AnySchema, type Any } from "@bufbuild/protobuf/wkt";
import { ContainerCreateSchema, ContainerDeleteSchema, ContainerUpdateSchema } from "./gen/containerd/events/container_pb.js";
import { TaskCreateSchema, TaskDeleteSchema, TaskExitSchema, TaskOOMSchema, TaskStartSchema } from "./gen/containerd/events/task_pb.js";

const RUNTIME_SPEC_PREFIX = "types.containerd.io/opencontainers/runtime-spec/1/";
export const SPEC_TYPE_URL = `${RUNTIME_SPEC_PREFIX}Spec`;
export const PROCESS_TYPE_URL = `${RUNTIME_SPEC_PREFIX}Process`;
export const LINUX_RESOURCES_TYPE_URL = `${RUNTIME_SPEC_PREFIX}LinuxResources`;

/** An Any's type_url was not the one the caller needed. */
export class TypeUrlError extends Error {
  constructor(
    readonly want: string,
    readonly got: string,
  ) {
    super(`expected an Any of type ${want}, got ${got === "" ? "an empty type_url" : got}`);
    this.name = "TypeUrlError";
  }
}

/** Packs a JSON-serialisable object (an OCI runtime Spec by default) the way containerd does. */
export function packJson(value: unknown, typeUrl: string = SPEC_TYPE_URL): Any {
  return create(AnySchema, { typeUrl, value: new TextEncoder().encode(JSON.stringify(value)) });
}

/** The JSON object inside a runtime-spec Any (Spec by default); the caller owns its shape. */
export function unpackJson(any: Any, typeUrl: string = SPEC_TYPE_URL): unknown {
  if (any.typeUrl !== typeUrl) throw new TypeUrlError(typeUrl, any.typeUrl);
  return JSON.parse(new TextDecoder().decode(any.value)) as unknown;
}

/** Packs a protobuf message with its bare full name as the type_url (e.g. containerd.runc.v1.Options). */
export function packMessage<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): Any {
  return create(AnySchema, { typeUrl: schema.typeName, value: toBinary(schema, message) });
}

/** Decodes a protobuf Any packed by containerd; a googleapis-style prefix is tolerated too. */
export function unpackMessage<Desc extends DescMessage>(schema: Desc, any: Any): MessageShape<Desc> {
  if (typeName(any.typeUrl) !== schema.typeName) throw new TypeUrlError(schema.typeName, any.typeUrl);
  return fromBinary(schema, any.value);
}

function typeName(typeUrl: string): string {
  return typeUrl.slice(typeUrl.lastIndexOf("/") + 1);
}

/** Events we decode, keyed by their type_url in the envelope. */
const eventSchemas = {
  "containerd.events.TaskCreate": TaskCreateSchema,
  "containerd.events.TaskStart": TaskStartSchema,
  "containerd.events.TaskExit": TaskExitSchema,
  "containerd.events.TaskOOM": TaskOOMSchema,
  "containerd.events.TaskDelete": TaskDeleteSchema,
  "containerd.events.ContainerCreate": ContainerCreateSchema,
  "containerd.events.ContainerUpdate": ContainerUpdateSchema,
  "containerd.events.ContainerDelete": ContainerDeleteSchema,
} as const;

type EventSchemas = typeof eventSchemas;
export type EventType = keyof EventSchemas;

/** A decoded event: narrow on `type` to get the message's fields. */
export type ContainerdEvent = { [T in EventType]: { type: T; event: MessageShape<EventSchemas[T]> } }[EventType];

function isEventType(name: string): name is EventType {
  return Object.hasOwn(eventSchemas, name);
}

/**
 * Decodes an Envelope's event. Returns undefined for event types we do not model (images,
 * snapshots, content, exec...), so a subscriber can skip them.
 */
export function unpackEvent(any: Any | undefined): ContainerdEvent | undefined {
  if (!any) return undefined;
  const name = typeName(any.typeUrl);
  if (!isEventType(name)) return undefined;
  // The mapped union cannot be built generically without a cast; the key and schema come from
  // the same table entry.
  return { type: name, event: fromBinary(eventSchemas[name], any.value) } as ContainerdEvent;
}
