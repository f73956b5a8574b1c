/*
 * For the scale bench's simulated nodes: many agents in one process, each watching its own
 * assignments/<node>/ prefix, served from ONE etcd watch on assignments/ instead of one gRPC
 * stream per agent. Everything else (reads, writes, txns, leases) goes to the real store as is.
 *
 * This only trims the simulation's own cost: on real machines each agent is its own process with
 * its own watch, which etcd serves without trouble; one Node process holding 5,000 watch streams
 * would measure the simulator, not the control plane. The server under test is untouched.
 *
 *   etcd ──watch assignments/ from R──► SharedWatch ──batches per node prefix──► agent watches
 *
 * A node's batches are kept (the bench's volume is small) so a watch opened later, from any
 * revision at or after R, replays what it missed; one from before R falls back to the real store.
 */
import type { Store, WatchBatch, WatchOptions } from "../pkg/cluster/store/index.js";

export class SharedWatch {
  /** The inner store with watch() served from the one watch; everything else passes as is. */
  readonly store: Store;
  private readonly perPrefix = new Map<string, { batches: WatchBatch[]; wake: Set<() => void> }>();
  private from = 0;
  private failure: Error | undefined;

  constructor(
    private readonly inner: Store,
    /** e.g. /hypervisor/v1/assignments/ : watches of its sub-prefixes are shared. */
    private readonly root: string,
    /**
     * The one etcd watch's prefix, within root (default root): e.g. assignments/f0- for a fleet
     * whose nodes are all named f0-…, so it receives no other fleet's events.
     */
    private readonly watched = root,
  ) {
    if (!watched.startsWith(root)) throw new Error(`shared watch: ${watched} is not under ${root}`);
    const watch = (prefix: string, opts?: WatchOptions) => this.watch(prefix, opts);
    this.store = new Proxy(inner, {
      get(target, prop) {
        if (prop === "watch") return watch;
        const v: unknown = Reflect.get(target, prop, target);
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  /** Opens the one watch; call before any agent starts. */
  async start(signal: AbortSignal): Promise<void> {
    this.from = (await this.inner.revision()) + 1;
    void (async () => {
      try {
        for await (const batch of this.inner.watch(this.watched, { fromRevision: this.from, signal })) {
          const byPrefix = new Map<string, WatchBatch>();
          for (const ev of batch.events) {
            const rest = ev.kv.key.slice(this.root.length);
            const prefix = this.root + rest.slice(0, rest.indexOf("/") + 1);
            let b = byPrefix.get(prefix);
            if (!b) byPrefix.set(prefix, (b = { revision: batch.revision, events: [] }));
            b.events.push(ev);
          }
          for (const [prefix, b] of byPrefix) {
            const ch = this.channel(prefix);
            ch.batches.push(b);
            for (const w of ch.wake) w();
          }
        }
      } catch (e) {
        if (!signal.aborted) this.failure = e as Error;
      }
      for (const ch of this.perPrefix.values()) for (const w of ch.wake) w();
    })();
  }

  watch(prefix: string, opts: WatchOptions = {}): AsyncIterable<WatchBatch> {
    const from = opts.fromRevision ?? 0;
    if (!prefix.startsWith(this.watched) || prefix === this.root || from < this.from || this.from === 0)
      return this.inner.watch(prefix, opts);
    return this.replay(prefix, from, opts.signal);
  }

  private async *replay(prefix: string, from: number, signal?: AbortSignal): AsyncGenerator<WatchBatch> {
    const ch = this.channel(prefix);
    let i = 0;
    while (!signal?.aborted) {
      if (this.failure) throw this.failure;
      for (; i < ch.batches.length; i++) {
        const b = ch.batches[i]!;
        if (b.revision >= from) yield b;
      }
      await new Promise<void>((resolve) => {
        const done = () => {
          ch.wake.delete(done);
          signal?.removeEventListener("abort", done);
          resolve();
        };
        ch.wake.add(done);
        signal?.addEventListener("abort", done, { once: true });
      });
    }
  }

  private channel(prefix: string) {
    let ch = this.perPrefix.get(prefix);
    if (!ch) this.perPrefix.set(prefix, (ch = { batches: [], wake: new Set() }));
    return ch;
  }
}
