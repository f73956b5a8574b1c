/*
 * The garbage collector (leader only) finishes deletions. An instance with delete_time whose
 * agent has destroyed it and dropped its assignment loses its record, its status and its
 * reservation on the node, in one transaction:
 *
 *   instances/<n> (delete_time) + no assignments/<node>/<n>
 *     ──► txn[compare instance rev, assignment absent, allocation rev]
 *           delete instances/<n>, status/<n>; put allocations/<node> without the uid
 */
import { ifAbsent, ifModRevision, keys, type Op } from "../../pkg/cluster/store/index.js";
import type { Logger } from "../../pkg/log/index.js";
import type { ServerContext } from "./context.js";
import { kickedLoop } from "./kicked-loop.js";
import { releaseAllocation } from "./records.js";

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
      const assignment = keys.assignment(node, i.name);
      if (node !== "" && informers.assignments.get(assignment)) continue; // the agent is not done yet
      const ops: Op[] = [
        { type: "delete", key: keys.instance(i.name) },
        { type: "delete", key: keys.status(i.name) },
      ];
      const compares = [ifModRevision(keys.instance(i.name), modRevision)];
      if (node !== "") {
        const release = releaseAllocation(informers, node, i.uid);
        compares.push(ifAbsent(assignment), release.compare);
        ops.push(...release.ops);
      }
      const res = await store.txn(compares, ops, [], { signal });
      if (res.succeeded) {
        removed++;
        this.log.info({ instance: i.name, node }, "instance removed");
      } else {
        conflicts++; // a stale copy: the informers bring the news, then we run again
      }
    }
    return { removed, conflicts };
  }
}
