/*
 * NodeService: nodes as the agents registered them, with what only the server knows added:
 * readiness (is the agent's lease alive?), what placements reserve, and the cordon and drain flags;
 * and the orphans each node's agent reports (instances it keeps without an assignment there),
 * which an operator adopts back or purges:
 *
 *   AdoptOrphan: txn[instance absent, or same uid and unchanged; allocation(s) unchanged]
 *                put instances/<n> Scheduled on the node + assignments/<node>/<n> + allocation;
 *                off the node it was placed on, if any (whose agent then fences its copy)
 *                ──► the agent finds its assignment with the orphan's uid: adopted as it is
 *   PurgeOrphan: the node's agent (AgentService.PurgeOrphan) destroys the orphan and its disks, then answers
 */
import { clone, create, fromBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  type Node,
  NodeCondition,
  NodeSchema,
  NodeService,
  type Orphan,
  OrphanSchema,
  ResourcesSchema,
} from "../../api/gen/hypervisor/v1/node_pb.js";
import {
  type Instance,
  InstanceSchema,
  type InstanceService,
  InstanceSpecSchema,
  InstanceStatusSchema,
  Phase,
  PowerState,
  RestartPolicy,
  StopInstanceRequestSchema,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { AllocationSchema, AssignmentSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { drainPin } from "./drain-controller.js";
import { type Compare, ifAbsent, ifModRevision, keys, type Op } from "../../pkg/cluster/store/index.js";
import type { ServerContext } from "./context.js";
import {
  allocationTotals,
  decodeAllocation,
  decodeInstance,
  decodeNode,
  encodeAllocation,
  encodeAssignment,
  encodeInstance,
  encodeNode,
  merged,
  requestOf,
} from "./records.js";
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

  async function read(name: string, signal: AbortSignal, field = "name"): Promise<{ node: Node; rev: number }> {
    validateName(field, name);
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

  async function readOrphan(node: string, name: string, signal: AbortSignal): Promise<Orphan> {
    validateName("node", node);
    validateName("name", name);
    const kv = await store.get(keys.orphan(node, name), { signal });
    if (!kv) throw new ConnectError(`node ${node} reports no orphan ${name}`, Code.NotFound);
    return fromBinary(OrphanSchema, kv.value);
  }

  /** Compares and ops that add (or, with add false, drop) `i` to the allocation of `node`. */
  async function allocate(node: string, i: Instance, add: boolean, signal: AbortSignal): Promise<{ compare: Compare; ops: Op[] }> {
    const kv = await store.get(keys.allocation(node), { signal });
    const alloc = kv ? decodeAllocation(kv) : create(AllocationSchema, {});
    const compare = ifModRevision(keys.allocation(node), kv?.modRevision ?? 0);
    if (add) alloc.instances[i.uid] = requestOf(i);
    else if (alloc.instances[i.uid]) delete alloc.instances[i.uid];
    else return { compare, ops: [] };
    return { compare, ops: [{ type: "put", key: keys.allocation(node), value: encodeAllocation(alloc) }] };
  }

  /** One attempt at placing the orphan's instance on `node`; undefined when a compare failed. */
  async function adoptOnce(node: string, o: Orphan, signal: AbortSignal): Promise<Instance | undefined> {
    const key = keys.instance(o.name);
    const kv = await store.get(key, { signal });
    const compares: Compare[] = [];
    const ops: Op[] = [];
    let next: Instance;
    if (!kv) {
      // The store forgot it: back from the spec its agent kept (or only its driver).
      const spec = o.spec ? clone(InstanceSpecSchema, o.spec) : create(InstanceSpecSchema, { driver: o.driver });
      if (!spec.driver) spec.driver = o.driver;
      if (spec.desiredPowerState === PowerState.UNSPECIFIED) spec.desiredPowerState = PowerState.RUNNING;
      if (spec.restartPolicy === RestartPolicy.UNSPECIFIED) spec.restartPolicy = RestartPolicy.ON_FAILURE;
      next = create(InstanceSchema, {
        name: o.name,
        uid: o.uid,
        labels: { ...o.labels },
        spec,
        createTime: timestampNow(),
        generation: 1n,
      });
      compares.push(ifAbsent(key));
    } else {
      const cur = decodeInstance(kv);
      if (cur.uid !== o.uid)
        throw new ConnectError(
          `instance ${o.name} exists with another uid (${cur.uid}, the orphan's is ${o.uid}); delete it before adopting the orphan of node ${node}`,
          Code.FailedPrecondition,
        );
      if (cur.deleteTime)
        throw new ConnectError(`instance ${o.name} is being deleted; its orphan cannot be adopted`, Code.FailedPrecondition);
      const from = cur.status?.node ?? "";
      if (from === node) return cur; // already placed here: the agent adopts it
      next = clone(InstanceSchema, cur);
      next.generation = cur.generation + 1n;
      compares.push(ifModRevision(key, kv.modRevision));
      if (from) {
        // Its copy there becomes the orphan (fenced by that node's agent, its disk kept).
        const release = await allocate(from, cur, false, signal);
        compares.push(release.compare);
        ops.push({ type: "delete", key: keys.assignment(from, o.name) }, ...release.ops);
      }
      ops.push({ type: "delete", key: keys.status(o.name) });
    }
    const now = timestampNow();
    next.status = create(InstanceStatusSchema, {
      phase: Phase.SCHEDULED,
      node,
      message: `adopted from an orphan on node ${node}`,
      scheduledTime: now,
      updateTime: now,
    });
    const value = encodeInstance(next);
    const here = await allocate(node, next, true, signal);
    compares.push(here.compare);
    ops.push({ type: "put", key, value }, { type: "put", key: keys.assignment(node, o.name), value: encodeAssignment(value) }, ...here.ops);
    const res = await store.txn(compares, ops, [], { signal });
    return res.succeeded ? next : undefined;
  }

  return {
    async listOrphans(req, hctx) {
      await read(req.node, hctx.signal, "node");
      const { kvs } = await store.range(keys.orphansOf(req.node), { signal: hctx.signal });
      return { orphans: kvs.map((kv) => fromBinary(OrphanSchema, kv.value)) };
    },

    async adoptOrphan(req, hctx) {
      await read(req.node, hctx.signal, "node");
      const o = await readOrphan(req.node, req.name, hctx.signal);
      for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
        const placed = await adoptOnce(req.node, o, hctx.signal);
        if (!placed) continue;
        ctx.log.warn({ node: req.node, instance: o.name, uid: o.uid, reason: o.reason }, "orphan adopted: placed on its node again");
        const st = await store.get(keys.status(o.name), { signal: hctx.signal });
        return { instance: merged(placed, st ? decodeInstance(st) : undefined) };
      }
      throw new ConnectError(`instance ${o.name} is changing too fast; try again`, Code.Aborted);
    },

    async purgeOrphan(req, hctx) {
      await read(req.node, hctx.signal, "node");
      const o = await readOrphan(req.node, req.name, hctx.signal);
      await ctx.agents.purgeOrphan(req.node, o.name, o.uid, hctx.signal);
      ctx.log.warn({ node: req.node, instance: o.name, uid: o.uid }, "orphan purged with its disks");
      return {};
    },

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
        const moving: string[] = [];
        const pinned: string[] = [];
        for (const kv of assigned.kvs) {
          const inst = fromBinary(AssignmentSchema, kv.value).instance;
          const name = kv.key.slice(prefix.length);
          (inst && drainPin(inst, req.name) ? pinned : moving).push(name);
        }
        const node = await setFlags(req.name, true, true, hctx.signal); // checks the name, NotFound
        ctx.log.info({ node: req.name, moving: moving.length, pinned: pinned.length }, "node drain started: moving its instances");
        return { node, movingInstances: moving, pinnedInstances: pinned };
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
