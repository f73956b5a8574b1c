/*
 * NodeService: nodes as the agents registered them, with what only the server knows added:
 * readiness (is the agent's lease alive?), what placements reserve, and the cordon and drain flags.
 */
import { clone, create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { type Node, NodeCondition, NodeSchema, NodeService, ResourcesSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import { type InstanceService, PowerState, StopInstanceRequestSchema } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { ifModRevision, keys } from "../../pkg/cluster/store/index.js";
import type { ServerContext } from "./context.js";
import { allocationTotals, decodeAllocation, decodeInstance, decodeNode, encodeNode } from "./records.js";
import { show, validateName } from "./validate.js";

const MAX_CAS_ATTEMPTS = 20;

export function nodeService(ctx: ServerContext, instances: ServiceImpl<typeof InstanceService>): ServiceImpl<typeof NodeService> {
  const { store } = ctx;

  async function describe(node: Node, signal: AbortSignal): Promise<Node> {
    const [alive, alloc] = await Promise.all([
      store.get(keys.alive(node.name), { signal }),
      store.get(keys.allocation(node.name), { signal }),
    ]);
    return withServerView(node, alive !== undefined, alloc ? allocationTotals(decodeAllocation(alloc)) : undefined);
  }

  async function read(name: string, signal: AbortSignal): Promise<{ node: Node; rev: number }> {
    validateName("name", name);
    const kv = await store.get(keys.node(name), { signal });
    if (!kv) throw new ConnectError(`node ${show(name)} not found`, Code.NotFound);
    return { node: decodeNode(kv), rev: kv.modRevision };
  }

  /** Uncordon also ends a drain in progress; a drain with move sets draining as well. */
  async function setFlags(name: string, cordoned: boolean, draining: boolean, signal: AbortSignal): Promise<Node> {
    for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
      const { node, rev } = await read(name, signal);
      if (node.cordoned === cordoned && node.draining === draining) return describe(node, signal);
      const next = clone(NodeSchema, node);
      next.cordoned = cordoned;
      next.draining = draining;
      const res = await store.txn(
        [ifModRevision(keys.node(name), rev)],
        [{ type: "put", key: keys.node(name), value: encodeNode(next) }],
        [],
        { signal },
      );
      if (res.succeeded) {
        ctx.log.info({ node: name, cordoned, draining }, draining ? "node draining" : cordoned ? "node cordoned" : "node uncordoned");
        return describe(next, signal);
      }
    }
    throw new ConnectError(`node ${show(name)} is changing too fast; try again`, Code.Aborted);
  }

  return {
    async listNodes(_req, hctx) {
      const [nodes, alive, allocs] = await Promise.all([
        store.range(keys.nodes, { signal: hctx.signal }),
        store.range(keys.alivePrefix, { signal: hctx.signal, keysOnly: true }),
        store.range(keys.allocations, { signal: hctx.signal }),
      ]);
      const aliveSet = new Set(alive.kvs.map((kv) => kv.key.slice(keys.alivePrefix.length)));
      const allocBy = new Map(allocs.kvs.map((kv) => [kv.key.slice(keys.allocations.length), allocationTotals(decodeAllocation(kv))]));
      return { nodes: nodes.kvs.map((kv) => decodeNode(kv)).map((n) => withServerView(n, aliveSet.has(n.name), allocBy.get(n.name))) };
    },

    async getNode(req, hctx) {
      const { node } = await read(req.name, hctx.signal);
      return { node: await describe(node, hctx.signal) };
    },

    async cordonNode(req, hctx) {
      const { node } = await read(req.name, hctx.signal);
      return { node: await setFlags(req.name, true, node.draining, hctx.signal) };
    },

    async uncordonNode(req, hctx) {
      return { node: await setFlags(req.name, false, false, hctx.signal) };
    },

    async drainNode(req, hctx) {
      const prefix = keys.assignmentsOf(req.name);
      if (req.move) {
        // What is there before the flag goes up: the leader's drain controller starts moving
        // them (as their budgets allow) as soon as it sees the node draining.
        const assigned = await store.range(prefix, { signal: hctx.signal });
        const moving = assigned.kvs.map((kv) => kv.key.slice(prefix.length));
        const node = await setFlags(req.name, true, true, hctx.signal); // checks the name, NotFound
        ctx.log.info({ node: req.name, moving: moving.length }, "node drain started: moving its instances");
        return { node, movingInstances: moving };
      }
      const node = await setFlags(req.name, true, false, hctx.signal);
      const assigned = await store.range(prefix, { signal: hctx.signal });
      const stopped: string[] = [];
      for (const kv of assigned.kvs) {
        const name = kv.key.slice(prefix.length);
        const spec = await store.get(keys.instance(name), { signal: hctx.signal });
        if (!spec) continue;
        const inst = decodeInstance(spec);
        if (inst.deleteTime || inst.spec?.desiredPowerState === PowerState.STOPPED) continue;
        await instances.stopInstance(create(StopInstanceRequestSchema, { name }), hctx);
        stopped.push(name);
      }
      ctx.log.info({ node: req.name, stopped: stopped.length }, "node drained");
      return { node, stoppedInstances: stopped };
    },
  };
}

export function withServerView(node: Node, alive: boolean, allocated: ReturnType<typeof allocationTotals> | undefined): Node {
  const out = clone(NodeSchema, node);
  out.condition = alive ? NodeCondition.READY : NodeCondition.NOT_READY;
  const a = allocated ?? allocationTotals(undefined);
  const cap = node.capacity;
  out.allocatable = create(ResourcesSchema, {
    vcpus: Math.max(0, (cap?.vcpus ?? 0) - a.vcpus),
    memoryMib: BigInt(Math.max(0, Number(cap?.memoryMib ?? 0n) - a.memoryMib)),
    diskGib: BigInt(Math.max(0, Number(cap?.diskGib ?? 0n) - a.diskGib)),
  });
  out.instanceCount = a.count;
  return out;
}
