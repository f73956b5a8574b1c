/*
 * The garbage collector (leader only) finishes deletions. An instance with delete_time whose
 * agent has destroyed it (its status carries the delete time; a node cannot write assignments,
 * so it says so in its own status) or that the HA controller released from a lost node (no
 * assignment left) loses its record, assignment, status and reservation in one transaction:
 *
 *   instances/<n> (delete_time) + (nodes/<node>/status/<n> destroyed, or no assignment)
 *     ──► txn[compare instance rev, status rev or assignment absent, allocation rev, project rev
 *             (+ usage rev with a quota)]
 *           delete instances/<n>, assignments/<node>/<n>, nodes/<node>/status/<n>;
 *           put allocations/<node> without the uid (+ projectusage/<p> less its share)
 *
 * (<n> is the instance's ref, "<project>/<name>".)
 */
import { ifAbsent, ifModRevision } from "../../pkg/cluster/store/index.js";
import { DEFAULT_PROJECT, destroyedBy, keys, refOf, removeOps } from "../../pkg/cluster/state/index.js";
import { projectParts } from "./project-txn.js";
import type { Logger } from "../../pkg/log/index.js";
import type { ServerContext } from "./context.js";
import { kickedLoop } from "./kicked-loop.js";

export class GcController {
  private readonly log: Logger;
  /** Keys of instances with delete_time set, kept from the informer's events. */
  private readonly deleting = new Set<string>();

  constructor(private readonly ctx: ServerContext) {
    this.log = ctx.log.child({ component: "gc" });
  }

  async run(signal: AbortSignal): Promise<void> {
    const { informers } = this.ctx;
    const loop = kickedLoop((s) => this.pass(s).then((r) => r.conflicts > 0), 10_000, this.log);
    // Only deletions concern the GC: keep their keys, so a pass does not scan every instance.
    for (const [key, { value }] of informers.instances.items) if (value.deleteTime) this.deleting.add(key);
    const offs = [
      informers.instances.subscribe((ev) => {
        if (ev.value?.deleteTime) {
          this.deleting.add(ev.key);
          loop.kick();
        } else this.deleting.delete(ev.key);
      }),
      informers.assignments.subscribe((ev) => {
        if (ev.type === "delete" && this.deleting.size > 0) loop.kick();
      }),
      informers.statuses.subscribe((ev) => {
        if (ev.value?.deleteTime && this.deleting.size > 0) loop.kick(); // an agent destroyed one
      }),
    ];
    try {
      await loop.run(signal);
    } finally {
      offs.forEach((off) => off());
    }
  }

  async pass(signal: AbortSignal): Promise<{ removed: number; conflicts: number }> {
    const { informers, store } = this.ctx;
    let removed = 0;
    let conflicts = 0;
    for (const key of [...this.deleting]) {
      const item = informers.instances.get(key);
      if (!item?.value.deleteTime) {
        this.deleting.delete(key);
        continue;
      }
      const { value: i, modRevision } = item;
      const node = i.status?.node ?? "";
      const { compares, ops } = removeOps(i, modRevision, node, informers.allocations.get(keys.allocation(node)));
      if (node !== "") {
        const assigned = informers.assignments.get(keys.assignment(node, refOf(i)));
        const status = informers.statuses.get(keys.status(node, refOf(i)));
        if (assigned && !destroyedBy(i, status?.value)) continue; // the agent is not done yet
        compares.push(
          assigned ? ifModRevision(keys.status(node, refOf(i)), status!.modRevision) : ifAbsent(keys.assignment(node, refOf(i))),
        );
      }
      // Its project's record is compared, and a quota's usage gives its share back, in the same txn.
      const parts = await projectParts(this.ctx, i.project || DEFAULT_PROJECT, [i], -1, false, signal);
      if ("counting" in parts) {
        conflicts++; // the project is being counted: once it is, the next pass removes it
        continue;
      }
      compares.push(...parts.compares);
      ops.push(...parts.ops);
      const res = await store.txn(compares, ops, [], { signal });
      if (res.succeeded) {
        removed++;
        this.log.info({ instance: refOf(i), node }, "instance removed");
      } else {
        conflicts++; // a stale copy: the informers bring the news, then we run again
      }
    }
    return { removed, conflicts };
  }
}
