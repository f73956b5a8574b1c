/*
 * How each record is stored: protobuf binary of an api/gen message. A codec pairs the two
 * directions so a key's reader and writer cannot disagree on its type.
 */
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { AccessBootstrapSchema, ApiTokenRecordSchema, RoleBindingRecordSchema } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { ProjectRecordSchema, ProjectUsageSchema } from "../../../api/gen/hypervisor/v1/project_pb.js";
import { JoinTokenRecordSchema, NodeBindingSchema } from "../../../api/gen/hypervisor/v1/identity_pb.js";
import { InstanceSchema } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeSchema, OrphanSchema } from "../../../api/gen/hypervisor/v1/node_pb.js";
import {
  AgentEndpointSchema,
  AllocationSchema,
  AssignmentSchema,
  ClusterIdentitySchema,
  NodeFlagsSchema,
} from "../../../api/gen/hypervisor/v1/store_pb.js";

export interface Codec<T> {
  encode(value: T): Uint8Array;
  decode(bytes: Uint8Array): T;
}

function codec<D extends DescMessage>(schema: D): Codec<MessageShape<D>> {
  return { encode: (v) => toBinary(schema, v), decode: (b) => fromBinary(schema, b) };
}

export const codecs = {
  /** instances/<project>/<name>, and nodes/<node>/status/<project>/<name> (name, project, uid and status only). */
  instance: codec(InstanceSchema),
  node: codec(NodeSchema),
  nodeFlags: codec(NodeFlagsSchema),
  allocation: codec(AllocationSchema),
  assignment: codec(AssignmentSchema),
  endpoint: codec(AgentEndpointSchema),
  orphan: codec(OrphanSchema),
  cluster: codec(ClusterIdentitySchema),
  joinToken: codec(JoinTokenRecordSchema),
  nodeBinding: codec(NodeBindingSchema),
  apiToken: codec(ApiTokenRecordSchema),
  accessBootstrap: codec(AccessBootstrapSchema),
  roleBinding: codec(RoleBindingRecordSchema),
  project: codec(ProjectRecordSchema),
  projectUsage: codec(ProjectUsageSchema),
};

/**
 * An Assignment holding the instance `codecs.instance.encode` gave: its one field is the instance
 * as a length-delimited field, so the bytes are wrapped, not encoded a second time.
 */
export function encodeAssignment(instance: Uint8Array): Uint8Array {
  return new BinaryWriter().tag(ASSIGNMENT_INSTANCE_FIELD, WireType.LengthDelimited).bytes(instance).finish();
}
const ASSIGNMENT_INSTANCE_FIELD = AssignmentSchema.field.instance.number;
