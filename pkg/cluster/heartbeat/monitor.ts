/*
 * The server's side of liveness: which nodes have a live nodes/<node>/alive key. Present = Ready,
 * deleted (lease revoked or expired) = NotReady. Built on list-then-watch, so a re-list after
 * compaction or a store outage reconciles the set and reports only real changes.
 *
 *   snapshot ──► diff against the known set ──► changes
 *   put nodes/n/alive ──► n alive (if it was not)    delete nodes/n/alive ──► n not alive
 */
import type { Store } from "../store/index.js";
import { keys, listWatch, parseNodeKey } from "../state/index.js";
import { logger as rootLogger, type Logger } from "../../log/index.js";

export interface LivenessChange {
  node: string;
  alive: boolean;
  /** Store revision at which the change was seen. */
  revision: number;
}

export type LivenessListener = (change: LivenessChange) => void;

export class LivenessMonitor {
  private readonly alive = new Set<string>();
  private readonly listeners = new Set<LivenessListener>();
  private readonly log: Logger;
  private syncedResolve!: () => void;
  /** Resolves once the first listing has been applied. */
  readonly synced: Promise<void> = new Promise((r) => (this.syncedResolve = r));

  constructor(
    private readonly store: Store,
    opts: { logger?: Logger } = {},
  ) {
    this.log = opts.logger ?? rootLogger("liveness-monitor");
  }

  isAlive(node: string): boolean {
    return this.alive.has(node);
  }

  aliveNodes(): string[] {
    return [...this.alive].sort();
  }

  /** Calls listener on every change; returns the unsubscribe function. */
  onChange(listener: LivenessListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The changes from now on, until signal aborts. */
  async *changes(signal: AbortSignal): AsyncGenerator<LivenessChange> {
    const queue: LivenessChange[] = [];
    let wake: (() => void) | undefined;
    const off = this.onChange((c) => (queue.push(c), wake?.()));
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      while (!signal.aborted) {
        const c = queue.shift();
        if (c) yield c;
        else await new Promise<void>((r) => (wake = r));
      }
    } finally {
      off();
      signal.removeEventListener("abort", onAbort);
    }
  }

  /** Watches until signal aborts. */
  async run(signal: AbortSignal): Promise<void> {
    const onError = (e: unknown) => this.log.warn({ err: e }, "liveness watch failed; re-listing");
    // Under nodes/, beside every node's other keys: only the alive ones count.
    const aliveOf = (key: string) => {
      const k = parseNodeKey(key);
      return k?.kind === "alive" ? k.node : undefined;
    };
    for await (const ev of listWatch(this.store, keys.nodes, { signal, onError })) {
      if (ev.type === "snapshot") {
        const now = new Set(ev.kvs.flatMap((kv) => aliveOf(kv.key) ?? []));
        for (const n of [...this.alive]) if (!now.has(n)) this.set(n, false, ev.revision);
        for (const n of now) this.set(n, true, ev.revision);
        this.syncedResolve();
        continue;
      }
      for (const e of ev.batch.events) {
        const node = aliveOf(e.kv.key);
        if (node !== undefined) this.set(node, e.type === "put", ev.batch.revision);
      }
    }
  }

  private set(node: string, alive: boolean, revision: number): void {
    if (this.alive.has(node) === alive) return;
    if (alive) this.alive.add(node);
    else this.alive.delete(node);
    for (const l of this.listeners) {
      try {
        l({ node, alive, revision });
      } catch (e) {
        this.log.error({ err: e }, "liveness listener threw");
      }
    }
  }
}
