/*
 * The drain controller (leader only) moves the instances off draining nodes (DrainNode with move;
 * the node is cordoned too, so the scheduler places them elsewhere), each group within its
 * disruption budget:
 *
 *   for each instance assigned to a draining node:
 *     a node-local disk, not declared ephemeral ──► stays (pinnedBy: a move would lose its data);
 *         the node stays draining until it is stopped and deleted, or declared ephemeral
 *     its budget's group (match_labels, else its labels), members meant to run (not stopped on
 *     purpose, not being deleted) ── unavailable = members not Running (moving ones included)
 *     unavailable < max_unavailable (or no budget) ──► txn[compare instance rev, allocation rev]
 *         delete assignments/<node>/<n>, status/<n>; put instances/<n> Pending; allocation without it
 *     otherwise wait: a moved member Running again on its new node frees the budget
 *   a draining node with nothing assigned ──► draining cleared (it stays cordoned)
 *
 * The old node's agent sees its assignment go and destroys its copy (which has no disk worth
 * keeping); the new node's agent creates it from the spec (no live migration).
 */
import { clone } from "@bufbuild/protobuf";
import { type Instance, Phase, PowerState } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeFlagsSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { ifModRevision } from "../../pkg/cluster/store/index.js";
import { codecs, keys, refOf, unplaceOps } from "../../pkg/cluster/state/index.js";
import type { Logger } from "../../pkg/log/index.js";
import type { ServerContext } from "./context.js";
import { kickedLoop } from "./kicked-loop.js";
import { labelsMatch } from "./scheduler.js";
import { pinnedBy } from "../../pkg/compute/driver/index.js";

/** Why instance `i` cannot leave `node`, or undefined when a drain may move it. */
export function drainPin(i: Instance, node: string): string | undefined {
  return pinnedBy(i.spec && { driver: i.spec.driver, image: i.spec.image, ephemeralDisks: i.spec.ephemeralDisks }, node);
}

export class DrainController {
  private readonly log: Logger;
  /** Instances a drain leaves in place, logged once each. */
  private readonly pinned = new Set<string>();

  constructor(private readonly ctx: ServerContext) {
    this.log = ctx.log.child({ component: "drain" });
  }

  async run(signal: AbortSignal): Promise<void> {
    const { informers } = this.ctx;
    const loop = kickedLoop((s) => this.pass(s).then((r) => r.conflicts > 0), 2000, this.log, 250);
    // Instance, status and assignment changes matter only while some node drains. The draining
    // nodes are kept from the events: 5,000 nodes registering must not each scan all the others.
    const draining = new Set<string>();
    const offs = [
      informers.nodes.subscribe((ev) => {
        if (ev.value?.draining) draining.add(ev.key);
        else draining.delete(ev.key);
        loop.kick();
      }),
      ...[informers.assignments, informers.statuses, informers.instances].map((i) =>
        i.subscribe(() => {
          if (draining.size) loop.kick();
        }),
      ),
    ];
    for (const [key, { value }] of informers.nodes.items) if (value.draining) draining.add(key);
    try {
      await loop.run(signal);
    } finally {
      offs.forEach((off) => off());
    }
  }

  async pass(signal: AbortSignal): Promise<{ moved: number; waiting: number; conflicts: number }> {
    const { informers, store } = this.ctx;
    let moved = 0;
    let waiting = 0;
    let conflicts = 0;
    const draining = [...informers.nodes.items.values()].filter(({ value }) => value.draining);
    if (draining.length === 0) return { moved, waiting, conflicts };
    /** Moves made in this pass per budget group, which the informers do not show yet. */
    const movedIn = new Map<string, number>();
    let lastRev = 0;

    for (const { value: node } of draining) {
      const prefix = keys.assignmentsOf(node.name);
      const names = [...informers.assignments.items.keys()].filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length));
      if (names.length === 0) {
        // Done: clear the flag if nothing changed the node meanwhile (an uncordon already did).
        const flags = informers.flags.get(keys.nodeFlags(node.name));
        if (!flags) continue;
        const next = clone(NodeFlagsSchema, flags.value);
        next.draining = false;
        const res = await store.txn(
          [ifModRevision(keys.nodeFlags(node.name), flags.modRevision)],
          [{ type: "put", key: keys.nodeFlags(node.name), value: codecs.nodeFlags.encode(next) }],
          [],
          { signal },
        );
        if (res.succeeded) this.log.info({ node: node.name }, "node drained: its instances run elsewhere");
        else conflicts++;
        continue;
      }
      for (const name of names) {
        const item = informers.instances.get(keys.instance(name));
        if (!item || item.value.status?.node !== node.name || item.value.deleteTime) continue; // deleting: its agent finishes it
        const i = item.value;
        const pin = drainPin(i, node.name);
        if (pin) {
          if (!this.pinned.has(name))
            this.log.warn({ instance: name, node: node.name, why: pin }, "not moving an instance off a draining node");
          this.pinned.add(name);
          waiting++;
          continue;
        }
        this.pinned.delete(name);
        const budget = i.spec?.placement?.disruptionBudget;
        let group = "";
        if (budget && budget.maxUnavailable > 0) {
          const selector = Object.keys(budget.matchLabels).length ? budget.matchLabels : i.labels;
          group = JSON.stringify(Object.entries(selector).sort());
          const down = this.unavailable(selector) + (movedIn.get(group) ?? 0);
          if (down >= budget.maxUnavailable) {
            waiting++;
            continue;
          }
        }
        const alloc = informers.allocations.get(keys.allocation(node.name));
        const { compares, ops } = unplaceOps(i, item.modRevision, node.name, alloc, `moving: node ${node.name} is draining`);
        const res = await store.txn(compares, ops, [], { signal });
        if (!res.succeeded) {
          conflicts++;
          continue;
        }
        moved++;
        lastRev = Math.max(lastRev, res.revision);
        // Counted as down until the informers show it Pending (then unavailable() counts it).
        if (group && this.running(i)) movedIn.set(group, (movedIn.get(group) ?? 0) + 1);
        this.log.info({ instance: name, node: node.name }, "moving an instance off a draining node");
      }
    }
    // The next pass must see these moves, or it would count the moved instances as still Running.
    if (lastRev)
      await Promise.all([informers.instances.waitForRevision(lastRev, signal), informers.statuses.waitForRevision(lastRev, signal)]);
    return { moved, waiting, conflicts };
  }

  /** Members of the group meant to run that are not Running now. */
  private unavailable(selector: Record<string, string>): number {
    const { informers } = this.ctx;
    let down = 0;
    for (const { value } of informers.instances.items.values()) {
      if (!this.member(value, selector)) continue;
      if (!this.running(value)) down++;
    }
    return down;
  }

  /**
   * Running where it is placed now: the status must come from the instance's current node, so a
   * stale status of the node it left (not yet deleted in our copy) does not count.
   */
  private running(i: Instance): boolean {
    const node = i.status?.node;
    const st = node ? this.ctx.informers.statuses.get(keys.status(node, refOf(i)))?.value : undefined;
    return Boolean(node) && st?.uid === i.uid && st.status?.node === node && st.status?.phase === Phase.RUNNING;
  }

  private member(i: Instance, selector: Record<string, string>): boolean {
    return !i.deleteTime && i.spec?.desiredPowerState !== PowerState.STOPPED && labelsMatch(i.labels, selector);
  }
}
