/*
 * What a resumed watch needs that the informers do not keep: which instances went away, and when.
 * The informers hold every live record with its mod revision, so "changed after R" is a lookup;
 * a deletion leaves nothing behind, so this keeps the last `capacity` of them (tombstones).
 *
 *   informer delete (record or status) ──► tombstone {name, revision} ──► ring of `capacity`
 *   resume from R: possible while R >= coveredFrom (every deletion after it is still known)
 *
 * coveredFrom starts at the informers' revision when the server starts (nothing before is known)
 * and moves up as the oldest tombstones are dropped.
 */
import type { Informers } from "./context.js";
import { keys, parseNodeKey } from "../../pkg/cluster/state/index.js";

interface Tombstone {
  name: string;
  revision: number;
}

export class WatchHistory {
  private readonly ring: Tombstone[] = [];
  private covered: number;

  constructor(
    private readonly informers: Informers,
    private readonly capacity = 10_000,
  ) {
    this.covered = Math.max(informers.instances.revision, informers.statuses.revision);
    informers.instances.subscribe((ev) => ev.type === "delete" && this.add(ev.key.slice(keys.instances.length), ev.revision));
    informers.statuses.subscribe((ev) => {
      const k = parseNodeKey(ev.key);
      if (ev.type === "delete" && k?.kind === "status") this.add(k.ref, ev.revision);
    });
  }

  private add(name: string, revision: number): void {
    this.ring.push({ name, revision });
    if (this.ring.length > this.capacity) this.covered = Math.max(this.covered, this.ring.shift()!.revision);
  }

  /** The oldest revision a watch may resume from. */
  get coveredFrom(): number {
    return this.covered;
  }

  /** The newest revision the server's copy reflects. */
  get current(): number {
    return Math.max(this.informers.instances.revision, this.informers.statuses.revision);
  }

  /** Names whose record or status was deleted after `revision`. */
  deletedSince(revision: number): Set<string> {
    const names = new Set<string>();
    for (let i = this.ring.length - 1; i >= 0 && this.ring[i]!.revision > revision; i--) names.add(this.ring[i]!.name);
    return names;
  }
}
