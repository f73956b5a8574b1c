/*
 * A node as the API shows it: the record its agent writes (nodes/<node>/record), with the flags
 * only servers write (nodeflags/<node>: cordoned, draining) merged in. Kept apart so a node can
 * rewrite its own record without ever touching what the servers decided about it.
 */
import { clone, create } from "@bufbuild/protobuf";
import { type Node, NodeSchema } from "../../../api/gen/hypervisor/v1/node_pb.js";
import { type AgentEndpoint, type NodeFlags, NodeFlagsSchema } from "../../../api/gen/hypervisor/v1/store_pb.js";
import type { Store } from "../store/index.js";
import { codecs } from "./codecs.js";
import { keys } from "./keys.js";
import { update, type Updated } from "./update.js";

/** The node with the servers' flags; a node without flags is neither cordoned nor draining. */
export function withFlags(node: Node, flags: NodeFlags | undefined): Node {
  const out = clone(NodeSchema, node);
  out.cordoned = flags?.cordoned ?? false;
  out.draining = flags?.draining ?? false;
  return out;
}

/**
 * Writes the node's record as its agent knows it. The agent is its only writer, so a plain put;
 * the flags fields are not the agent's and are stored empty.
 */
export async function putNodeRecord(store: Store, node: Node, opts: { signal?: AbortSignal } = {}): Promise<number> {
  if (node.name === "") throw new Error("node name is required");
  const rec = clone(NodeSchema, node);
  rec.cordoned = false;
  rec.draining = false;
  return store.put(keys.node(node.name), codecs.node.encode(rec), opts.signal ? { signal: opts.signal } : {});
}

/** Sets the flags given (compare-and-swap); no write when they already have those values. */
export function setNodeFlags(
  store: Store,
  node: string,
  flags: { cordoned?: boolean; draining?: boolean },
  opts: { signal?: AbortSignal } = {},
): Promise<Updated<NodeFlags>> {
  return update(
    store,
    keys.nodeFlags(node),
    codecs.nodeFlags,
    ({ value }) => {
      const next = value ? clone(NodeFlagsSchema, value) : create(NodeFlagsSchema, {});
      if (flags.cordoned !== undefined) next.cordoned = flags.cordoned;
      if (flags.draining !== undefined) next.draining = flags.draining;
      const same = (value?.cordoned ?? false) === next.cordoned && (value?.draining ?? false) === next.draining;
      return same ? undefined : { value: next };
    },
    opts,
  );
}

/** Where the server reaches a node's agent (nodes/<node>/endpoint), or undefined if it publishes none. */
export async function readEndpoint(store: Store, node: string, signal?: AbortSignal): Promise<AgentEndpoint | undefined> {
  const kv = await store.get(keys.endpoint(node), signal ? { signal } : {});
  return kv ? codecs.endpoint.decode(kv.value) : undefined;
}
