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
import { type Node, NodeCondition, NodeSchema, NodeService, type Orphan, ResourcesSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import {
  type Instance,
  InstanceSchema,
  type InstanceService,
  InstanceSpecSchema,
  PowerState,
  RestartPolicy,
  StopInstanceRequestSchema,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { AssignmentSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { drainPin } from "./drain-controller.js";
import { type Compare, ifAbsent, ifModRevision, type Op } from "../../pkg/cluster/store/index.js";
import {
  allocationOps,
  allocationTotals,
  codecs,
  ConflictError,
  keys,
  displayRef,
  merged,
  placeOps,
  refOf,
  setNodeFlags,
  splitRef,
  withFlags,
} from "../../pkg/cluster/state/index.js";
import type { ServerContext } from "./context.js";
import { requestRef, show, showRef, validateName } from "./validate.js";

const MAX_CAS_ATTEMPTS = 20;

export function nodeService(ctx: ServerContext, instances: ServiceImpl<typeof InstanceService>): ServiceImpl<typeof NodeService> {
  const { store } = ctx;

  async function describe(node: Node, signal: AbortSignal): Promise<Node> {
    const [alive, alloc] = await Promise.all([
      store.get(keys.alive(node.name), { signal }),
      store.get(keys.allocation(node.name), { signal }),
    ]);
    return withServerView(node, alive !== undefined, alloc ? allocationTotals(codecs.allocation.decode(alloc.value)) : undefined);
  }

  /** The node's record with the servers' flags. */
  async function read(name: string, signal: AbortSignal, field = "name"): Promise<{ node: Node }> {
    validateName(field, name);
    const [kv, flags] = await Promise.all([store.get(keys.node(name), { signal }), store.get(keys.nodeFlags(name), { signal })]);
    if (!kv) throw new ConnectError(`node ${show(name)} not found`, Code.NotFound);
    return { node: withFlags(codecs.node.decode(kv.value), flags ? codecs.nodeFlags.decode(flags.value) : undefined) };
  }

  /** Uncordon also ends a drain in progress; a drain with move sets draining as well. */
  async function setFlags(name: string, cordoned: boolean, draining: boolean, signal: AbortSignal): Promise<Node> {
    const { node } = await read(name, signal);
    try {
      const res = await setNodeFlags(store, name, { cordoned, draining }, { signal });
      if (res.written)
        ctx.log.info({ node: name, cordoned, draining }, draining ? "node draining" : cordoned ? "node cordoned" : "node uncordoned");
    } catch (e) {
      if (e instanceof ConflictError) throw new ConnectError(`node ${show(name)} is changing too fast; try again`, Code.Aborted);
      throw e;
    }
    node.cordoned = cordoned;
    node.draining = draining;
    return describe(node, signal);
  }

  async function readOrphan(node: string, req: { project: string; name: string }, signal: AbortSignal): Promise<Orphan> {
    validateName("node", node);
    const ref = requestRef(req);
    const kv = await store.get(keys.orphan(node, ref), { signal });
    if (!kv) throw new ConnectError(`node ${node} reports no orphan ${displayRef(ref)}`, Code.NotFound);
    return codecs.orphan.decode(kv.value);
  }

  /** Compares and ops that add (or, with add false, drop) `i` to the allocation of `node`. */
  async function allocate(node: string, i: Instance, add: boolean, signal: AbortSignal): Promise<{ compare: Compare; ops: Op[] }> {
    const kv = await store.get(keys.allocation(node), { signal });
    const a = kv ? { value: codecs.allocation.decode(kv.value), modRevision: kv.modRevision } : undefined;
    return allocationOps(node, a, add ? { add: i } : { drop: i.uid });
  }

  /** One attempt at placing the orphan's instance on `node`; undefined when a compare failed. */
  async function adoptOnce(node: string, o: Orphan, signal: AbortSignal): Promise<Instance | undefined> {
    const ref = refOf(o);
    const key = keys.instance(ref);
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
        project: splitRef(ref).project,
        uid: o.uid,
        labels: { ...o.labels },
        spec,
        createTime: timestampNow(),
        generation: 1n,
      });
      compares.push(ifAbsent(key));
    } else {
      const cur = codecs.instance.decode(kv.value);
      if (cur.uid !== o.uid)
        throw new ConnectError(
          `instance ${showRef(ref)} exists with another uid (${cur.uid}, the orphan's is ${o.uid}); delete it before adopting the orphan of node ${node}`,
          Code.FailedPrecondition,
        );
      if (cur.deleteTime)
        throw new ConnectError(`instance ${showRef(ref)} is being deleted; its orphan cannot be adopted`, Code.FailedPrecondition);
      const from = cur.status?.node ?? "";
      if (from === node) return cur; // already placed here: the agent adopts it
      next = clone(InstanceSchema, cur);
      next.generation = cur.generation + 1n;
      compares.push(ifModRevision(key, kv.modRevision));
      if (from) {
        // Its copy there becomes the orphan (fenced by that node's agent, its disk kept).
        const release = await allocate(from, cur, false, signal);
        compares.push(release.compare);
        ops.push({ type: "delete", key: keys.assignment(from, ref) }, { type: "delete", key: keys.status(from, ref) }, ...release.ops);
      }
    }
    // The compare on the record is the one made above (absent, or unchanged since read).
    const place = placeOps(next, 0, node, { message: `adopted from an orphan on node ${node}` });
    const here = await allocate(node, place.next, true, signal);
    compares.push(here.compare);
    ops.push(...place.ops, ...here.ops);
    const res = await store.txn(compares, ops, [], { signal });
    return res.succeeded ? place.next : undefined;
  }

  return {
    async listOrphans(req, hctx) {
      await read(req.node, hctx.signal, "node");
      const { kvs } = await store.range(keys.orphansOf(req.node), { signal: hctx.signal });
      return { orphans: kvs.map((kv) => codecs.orphan.decode(kv.value)) };
    },

    async adoptOrphan(req, hctx) {
      await read(req.node, hctx.signal, "node");
      const o = await readOrphan(req.node, req, hctx.signal);
      const ref = refOf(o);
      for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
        const placed = await adoptOnce(req.node, o, hctx.signal);
        if (!placed) continue;
        ctx.log.warn({ node: req.node, instance: ref, uid: o.uid, reason: o.reason }, "orphan adopted: placed on its node again");
        const st = await store.get(keys.status(req.node, ref), { signal: hctx.signal });
        return { instance: merged(placed, st ? codecs.instance.decode(st.value) : undefined) };
      }
      throw new ConnectError(`instance ${showRef(ref)} is changing too fast; try again`, Code.Aborted);
    },

    async purgeOrphan(req, hctx) {
      await read(req.node, hctx.signal, "node");
      const o = await readOrphan(req.node, req, hctx.signal);
      await ctx.agents.purgeOrphan(req.node, refOf(o), o.uid, hctx.signal);
      ctx.log.warn({ node: req.node, instance: refOf(o), uid: o.uid }, "orphan purged with its disks");
      return {};
    },

    async listNodes(_req, hctx) {
      // From the informers: nodes/ holds every instance's status too, far too much to range. They
      // wait for this server's own last flag change, so a cordon shows in the next list.
      const { nodes, flags, alive, allocations } = ctx.informers;
      await flags.waitForRevision(ctx.writtenAt(keys.nodeFlagsPrefix), hctx.signal);
      const out = [...nodes.items.values()].map(({ value: n }) =>
        withServerView(n, alive.get(keys.alive(n.name)) !== undefined, allocationTotals(allocations.get(keys.allocation(n.name))?.value)),
      );
      out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      return { nodes: out };
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
          (inst && drainPin(inst, req.name) ? pinned : moving).push(displayRef(name));
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
        const inst = codecs.instance.decode(spec.value);
        if (inst.deleteTime || inst.spec?.desiredPowerState === PowerState.STOPPED) continue;
        await instances.stopInstance(create(StopInstanceRequestSchema, splitRef(name)), hctx);
        stopped.push(displayRef(name));
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
