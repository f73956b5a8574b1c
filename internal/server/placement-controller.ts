/*
 * The placement controller (leader only) turns Pending instances into placements:
 *
 *   informers ──► snapshot ──► schedule() (pure) ──► one txn per placement:
 *      compare instances/<name> mod_revision   (nobody changed or deleted it since we read it)
 *      compare allocations/<node> mod_revision (nobody else reserved on that node meanwhile)
 *      put instance (Scheduled, node) + assignments/<node>/<name> + allocations/<node>
 *
 * A failed compare means our copy was stale: wait for the informers to catch up and run again.
 * Instances that fit nowhere stay Pending with a message counting why.
 *
 * A pass costs what changed, not the cluster's size: the Pending instances and the scheduler's
 * node views are kept up to date from the informers' events, so a pass over 10,000 instances on
 * 5,000 nodes neither scans the instances nor rebuilds every node's view.
 */
import { clone, create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { type Instance, InstanceSchema, InstanceStatusSchema, Phase } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { type Allocation, AllocationSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { GroupCommit, ifModRevision, MAX_TXN_BYTES, type Op, txnBytes } from "../../pkg/cluster/store/index.js";
import { codecs, keys, parseNodeKey, placeOps, refOf, requestOf } from "../../pkg/cluster/state/index.js";
import type { Logger } from "../../pkg/log/index.js";
import type { ServerContext } from "./context.js";
import type { InformerEvent, Item } from "./informer.js";
import { kickedLoop } from "./kicked-loop.js";
import { metrics } from "./metrics.js";
import { needsGroups, nodeView, placedViews, placementRequest } from "./placement-input.js";
import { type Algorithm, type NodeView, schedule } from "./scheduler.js";

/** Instances per placement txn: 2 puts and 1 compare each, well inside etcd's default --max-txn-ops of 128. */
const MAX_BATCH = 40;
/**
 * At least this long between passes under a steady stream of creates, so a pass places what
 * arrived meanwhile in a few txns instead of one txn (and one pass over the nodes) per create.
 * An idle controller places at once: only back-to-back passes wait.
 */
const PASS_INTERVAL_MS = 20;
/** An upper bound on one instance's entry in a node's Allocation record (uid and resources). */
const ALLOCATION_ENTRY_BYTES = 64;
/** Instances one pass schedules at most (oldest first). */
const MAX_PER_PASS = 1000;
/**
 * Node batches written at once. They go through group commit: those that meet in its queue
 * share a txn (one raft entry) instead of each node's batch being a round trip of its own.
 */
const PARALLEL_NODES = 16;

export class PlacementController {
  private readonly log: Logger;
  /** Pending instances (no node, not being deleted), as the informer holds them. */
  private readonly pending = new Map<string, { instance: Instance; rev: number }>();
  /** Pass in which a Pending instance last fitted nowhere: they go behind the others. */
  private readonly failedIn = new Map<string, number>();
  private passes = 0;
  /** Every node's view sorted by name, as the scheduler walks them; undefined: build anew. */
  private sorted: NodeView[] | undefined;
  /** Node name → its index in `sorted`. */
  private readonly at = new Map<string, number>();
  /** Nodes whose record, allocation or liveness changed since `sorted` was last brought up to date. */
  private readonly stale = new Set<string>();
  /** Node batches of a pass that meet here share a txn. */
  private readonly commits: GroupCommit;

  constructor(
    private readonly ctx: ServerContext,
    private readonly algorithm: Algorithm,
    /** Retry interval for instances that could not be placed. */
    private readonly retryMs = 5000,
    /** Instances one pass schedules at most. */
    private readonly maxPerPass = MAX_PER_PASS,
  ) {
    this.log = ctx.log.child({ component: "placement" });
    this.commits = new GroupCommit(ctx.store);
  }

  /** Runs until the signal aborts (leadership lost or shutdown). */
  async run(signal: AbortSignal): Promise<void> {
    const { informers } = this.ctx;
    const loop = kickedLoop((s) => this.pass(s).then((r) => r.conflicts > 0 || r.more), this.retryMs, this.log, PASS_INTERVAL_MS);
    // Subscribed before the first scan, so nothing between the two is missed.
    const onInstance = (ev: InformerEvent<Instance>) => {
      if (this.track(ev.key, ev.type === "put" ? informers.instances.get(ev.key) : undefined)) loop.kick();
    };
    const onNode = (nodeOf: (key: string) => string | undefined) => (ev: { key: string }) => {
      const node = nodeOf(ev.key);
      if (node === undefined) return;
      this.stale.add(node);
      loop.kick();
    };
    const underNodes = (key: string) => parseNodeKey(key)?.node;
    const offs = [
      informers.instances.subscribe(onInstance),
      informers.nodes.subscribe(onNode(underNodes)),
      informers.alive.subscribe(onNode(underNodes)),
      informers.allocations.subscribe(onNode((key) => key.slice(keys.allocations.length))),
    ];
    this.pending.clear();
    for (const [key, item] of informers.instances.items) this.track(key, item);
    this.sorted = undefined;
    try {
      await loop.run(signal);
    } finally {
      offs.forEach((off) => off());
    }
  }

  /** Keeps `pending` in step with one instance key; true if it is (or was) Pending. */
  private track(key: string, item: Item<Instance> | undefined): boolean {
    const i = item?.value;
    const name = key.slice(keys.instances.length);
    if (i && !i.deleteTime && (i.status?.node ?? "") === "" && i.spec) {
      this.pending.set(name, { instance: i, rev: item.modRevision });
      return true;
    }
    this.failedIn.delete(name);
    return this.pending.delete(name);
  }

  /** One scheduling pass over every Pending instance. */
  async pass(signal: AbortSignal): Promise<{ placed: number; conflicts: number; more: boolean }> {
    return this.placeAll(signal);
  }

  private async placeAll(signal: AbortSignal): Promise<{ placed: number; conflicts: number; more: boolean }> {
    const { informers, store } = this.ctx;
    if (this.pending.size === 0) return { placed: 0, conflicts: 0, more: false };
    const pass = ++this.passes;
    let pending = [...this.pending.values()];
    // Oldest first (fairness, and a deterministic order for a given snapshot), but those that
    // fitted nowhere last time behind the rest: a backlog of unplaceable instances must not hold
    // back the slice of others that would fit.
    const failed = (p: { instance: Instance }) => this.failedIn.get(refOf(p.instance)) ?? 0;
    pending.sort(
      (a, b) =>
        failed(a) - failed(b) ||
        Number(a.instance.createTime?.seconds ?? 0n) - Number(b.instance.createTime?.seconds ?? 0n) ||
        a.rev - b.rev,
    );
    // A backlog is placed a slice at a time: one synchronous schedule() over 10,000 requests
    // would hold the event loop (and the API) for seconds. Our own writes kick the next pass.
    const more = pending.length > this.maxPerPass;
    if (more) pending = pending.slice(0, this.maxPerPass);

    // Allocations are copied only for the nodes that get placements (placeBatch).
    const allocs = new Map<string, { alloc: Allocation; rev: number }>();
    const views = this.nodeViews();
    const requests = pending.map(({ instance }) => placementRequest(instance));
    // Instances already placed matter only to group constraints (affinity, spread, max per node).
    const onNodes = requests.some(needsGroups) ? placedViews(informers) : [];
    const plan = schedule(views, requests, this.algorithm, { placed: onNodes });
    const byName = new Map(pending.map((p) => [refOf(p.instance), p]));
    let placed = 0;
    let lastRev = 0;
    let conflicts = 0;

    // One txn per node and batch: binpack sends many instances to one node, and placing them one
    // txn at a time would chain every placement on the previous one's round trip. Nodes go in
    // parallel; a lost compare fails only that node's batch, which the next pass replans.
    const byNode = new Map<string, typeof plan.placements>();
    for (const p of plan.placements) {
      const list = byNode.get(p.node) ?? [];
      list.push(p);
      byNode.set(p.node, list);
    }
    // A node's batches run in order (each compares the allocation the previous one wrote).
    const jobs = [...byNode].map(([node, list]) => ({ node, names: list.map((p) => p.instance) }));
    let nextJob = 0;
    const worker = async () => {
      for (let job = jobs[nextJob++]; job; job = jobs[nextJob++]) {
        for (let i = 0; i < job.names.length;) {
          const { revision, count } = await this.placeBatch(job.node, job.names.slice(i, i + MAX_BATCH), byName, allocs, signal);
          if (!revision) {
            conflicts++;
            break; // the rest of this node's plan assumed this batch: replan
          }
          placed += count;
          i += count;
          lastRev = Math.max(lastRev, revision);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL_NODES, jobs.length) }, worker));

    for (const u of plan.unplaced) {
      this.failedIn.set(u.instance, pass);
      const { instance, rev } = byName.get(u.instance)!;
      if (instance.status?.message === u.message) continue;
      const next = clone(InstanceSchema, instance);
      next.status = create(InstanceStatusSchema, { phase: Phase.PENDING, message: u.message, updateTime: timestampNow() });
      const res = await store.txn(
        [ifModRevision(keys.instance(refOf(instance)), rev)],
        [{ type: "put", key: keys.instance(refOf(instance)), value: codecs.instance.encode(next) }],
        [],
        { signal },
      );
      if (res.succeeded) lastRev = Math.max(lastRev, res.revision);
      this.log.info({ instance: u.instance, reason: u.message }, "instance cannot be placed yet");
    }

    // Let our own writes come back through the informers before the next pass reads them, so it
    // does not retry placements it has just made.
    if (lastRev > 0) await this.ctx.informers.instances.waitForRevision(lastRev, signal);
    if (conflicts > 0) this.log.info({ conflicts }, "placement conflicts; replanning");
    return { placed, conflicts, more };
  }

  /**
   * Every node's view, by name: only the nodes whose record, allocation or liveness changed since
   * the last pass are rebuilt; all are when a node came or went (the order changes).
   */
  private nodeViews(): NodeView[] {
    const { informers } = this.ctx;
    for (const name of this.stale) {
      if (!this.sorted) break;
      const n = informers.nodes.get(keys.node(name))?.value;
      const at = this.at.get(name);
      if (n && at !== undefined) this.sorted[at] = nodeView(n, informers);
      else if (n || at !== undefined) this.sorted = undefined; // joined or left
    }
    this.stale.clear();
    if (!this.sorted) {
      this.sorted = [...informers.nodes.items.values()]
        .map(({ value }) => nodeView(value, informers))
        .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      this.at.clear();
      this.sorted.forEach((v, i) => this.at.set(v.name, i));
    }
    return this.sorted;
  }

  /**
   * Places the first of `names` on `node` in one txn: as many as fit in MAX_TXN_BYTES (at least
   * one), each unchanged since we read it, the node's allocation unchanged, then each instance
   * Scheduled with its assignment, and the allocation. Returns the revision written and how many
   * it placed, or revision 0 when a compare failed (nothing written).
   */
  private async placeBatch(
    node: string,
    names: string[],
    byName: Map<string, { instance: Instance; rev: number }>,
    allocs: Map<string, { alloc: Allocation; rev: number }>,
    signal: AbortSignal,
  ): Promise<{ revision: number; count: number }> {
    let a = allocs.get(node);
    if (!a) {
      // The first batch for this node in this pass: start from the informer's copy.
      const item = this.ctx.informers.allocations.get(keys.allocation(node));
      a = { alloc: item?.value ?? create(AllocationSchema, {}), rev: item?.modRevision ?? 0 };
    }
    const alloc = clone(AllocationSchema, a.alloc);
    const now = timestampNow();
    const compares = [ifModRevision(keys.allocation(node), a.rev)];
    const puts: Op[] = [];
    // The allocation: its key compared and written, and its value, under 64 bytes an instance.
    let bytes = 2 * keys.allocation(node).length + ALLOCATION_ENTRY_BYTES * (Object.keys(alloc.instances).length + names.length);
    let count = 0;
    for (const name of names) {
      const { instance, rev } = byName.get(name)!;
      const { compare, ops } = placeOps(instance, rev, node, { now });
      const weight = txnBytes([compare], ops);
      if (count > 0 && bytes + weight > MAX_TXN_BYTES) break; // the next batch takes the rest
      bytes += weight;
      count++;
      alloc.instances[instance.uid] = requestOf(instance);
      compares.push(compare);
      puts.push(...ops);
    }
    puts.push({ type: "put", key: keys.allocation(node), value: codecs.allocation.encode(alloc) });
    const res = await this.commits.commit(compares, puts, signal);
    if (!res.succeeded) {
      metrics.placementConflicts.inc();
      return { revision: 0, count: 0 };
    }
    // The next batch for this node compares against what we just wrote.
    allocs.set(node, { alloc, rev: res.revision });
    metrics.placements.inc(count);
    this.log.debug({ node, instances: names.slice(0, count) }, "placed");
    return { revision: res.revision, count };
  }
}
