/*
 * The HA controller (leader only) moves instances off nodes that stay NotReady. Once a node's
 * lease has been gone for the grace period (as this leader saw it: a new leader waits a whole
 * period again), each instance assigned there whose restart policy is not "never" goes back to
 * Pending for the scheduler to place elsewhere, in one transaction per instance:
 *
 *   compare instances/<n> rev (nobody moved or changed it since we read it: once only)
 *           alive/<node> absent  (the node did not come back meanwhile)
 *           allocations/<node> rev
 *   delete  assignments/<node>/<n>, status/<n>      put instances/<n> Pending, allocations/<node> without it
 *
 * Only instances whose disks can follow are moved: none with a node-local disk (a libvirt VM
 * booted from an image) unless its spec declares the disks ephemeral; shared storage will lift
 * this, as Proxmox HA requires shared storage. A pinned instance stays placed on its node, and
 * ExplainInstance says why (decideHa gives the reason).
 *
 * Fencing: the old node's agent, if it comes back, finds no assignment for the instance and
 * destroys its copy, which has no disk worth keeping (on adoption, or when the assignment's
 * deletion reaches its watch), and its status writes compare that assignment, so it can no longer
 * report on the instance. An instance being deleted on a dead node loses its assignment the same
 * way, so the GC can finish.
 */
import { type Instance, RestartPolicy } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { pinnedBy } from "../../pkg/compute/driver/index.js";
import { ifAbsent } from "../../pkg/cluster/store/index.js";
import { keys, unplaceOps } from "../../pkg/cluster/state/index.js";
import type { Logger } from "../../pkg/log/index.js";
import type { ServerContext } from "./context.js";
import { kickedLoop } from "./kicked-loop.js";
import { metrics } from "./metrics.js";

export const DEFAULT_HA_GRACE_MS = 60_000;

export type HaDecision = { kind: "release" } | { kind: "move" } | { kind: "stay"; why: string };

/** What HA does with instance `i` placed on `node`, lost for the grace period. Pure. */
export function decideHa(i: Instance, node: string): HaDecision {
  if (i.deleteTime) return { kind: "release" };
  if (i.spec?.restartPolicy === RestartPolicy.NEVER) return { kind: "stay", why: "its restart policy is never" };
  const pinned = pinnedBy(i.spec && { driver: i.spec.driver, image: i.spec.image, ephemeralDisks: i.spec.ephemeralDisks }, node);
  return pinned ? { kind: "stay", why: pinned } : { kind: "move" };
}

export class HaController {
  private readonly log: Logger;
  /** Node → when this leader first saw it NotReady. */
  private readonly downSince = new Map<string, number>();
  /** Instances left on a lost node, and why (logged once). */
  private readonly stayed = new Map<string, string>();

  constructor(
    private readonly ctx: ServerContext,
    private readonly graceMs = DEFAULT_HA_GRACE_MS,
    private readonly now: () => number = Date.now,
  ) {
    this.log = ctx.log.child({ component: "ha" });
  }

  async run(signal: AbortSignal): Promise<void> {
    const { informers } = this.ctx;
    // Also on a timer: the grace period ends without any event.
    const loop = kickedLoop(
      (s) => this.pass(s).then((r) => r.conflicts > 0),
      Math.max(250, Math.min(this.graceMs / 4, 5000)),
      this.log,
      1000,
    );
    // Assignments matter only on a node past its grace period; the timer looks at those again.
    const offs = [informers.nodes.subscribe(loop.kick), informers.alive.subscribe(loop.kick)];
    try {
      await loop.run(signal);
    } finally {
      offs.forEach((off) => off());
    }
  }

  async pass(signal: AbortSignal): Promise<{ moved: number; conflicts: number }> {
    const { informers, store } = this.ctx;
    const now = this.now();
    const expired: string[] = [];
    for (const { value: n } of informers.nodes.items.values()) {
      if (informers.alive.get(keys.alive(n.name)) !== undefined) {
        this.downSince.delete(n.name);
        continue;
      }
      const since = this.downSince.get(n.name) ?? now;
      this.downSince.set(n.name, since);
      if (now - since >= this.graceMs) expired.push(n.name);
    }
    for (const name of this.downSince.keys()) if (!informers.nodes.get(keys.node(name))) this.downSince.delete(name);

    let moved = 0;
    let conflicts = 0;
    const pinned = new Set<string>();
    for (const node of expired) {
      const prefix = keys.assignmentsOf(node);
      const names = [...informers.assignments.items.keys()].filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length));
      for (const name of names) {
        const item = informers.instances.get(keys.instance(name));
        if (!item || item.value.status?.node !== node) continue;
        const i = item.value;
        const d = decideHa(i, node);
        if (d.kind === "stay") {
          if (d.why !== this.stayed.get(name))
            this.log.warn({ instance: name, node, why: d.why }, "not moving an instance off a lost node");
          this.stayed.set(name, d.why);
          pinned.add(name);
          continue;
        }
        const deleting = d.kind === "release";
        const seconds = Math.round(this.graceMs / 1000);
        const { compares, ops } = unplaceOps(
          i,
          item.modRevision,
          node,
          informers.allocations.get(keys.allocation(node)),
          deleting ? undefined : `rescheduling: node ${node} NotReady for ${seconds}s`,
        );
        compares.push(ifAbsent(keys.alive(node))); // the node did not come back meanwhile
        const res = await store.txn(compares, ops, [], { signal });
        if (!res.succeeded) {
          conflicts++;
          continue;
        }
        moved++;
        if (!deleting) metrics.haReschedules.inc();
        this.log.warn(
          { instance: name, node, graceSeconds: seconds },
          deleting ? "released a deleted instance from a lost node" : "rescheduling an instance from a lost node",
        );
      }
    }
    for (const n of this.stayed.keys()) if (!pinned.has(n)) this.stayed.delete(n);
    return { moved, conflicts };
  }
}
