/*
 * A work queue of keys in the style of client-go's workqueue: events only say "look at this key
 * again"; the reconciler re-reads everything. Three sets make that safe and cheap:
 *
 *   add(k) ──► dirty ──► queue ──get()──► processing ──done(k)──► (dirty again? back to queue)
 *
 * - a key added many times before a worker takes it is processed once (dirty dedupes);
 * - a key added while it is being processed waits until done(): never two workers on one key;
 * - a failed key comes back after a per-key exponential backoff (base·2^failures, capped);
 *   a TerminalError is reported and not retried; success forgets the failures.
 */
import type { Logger } from "../../pkg/log/index.js";

/** A failure that retrying cannot fix (bad spec, missing driver): reported, not requeued. */
export class TerminalError extends Error {
  override name = "TerminalError";
}

export interface ProcessResult {
  /** Look at the key again after this long even if nothing changes (timed exits, restart backoff). */
  requeueAfterMs?: number;
}

export type Processor<K> = (key: K, signal: AbortSignal) => Promise<ProcessResult | void>;

export interface WorkQueueOptions {
  /** First retry delay (default 100 ms). */
  baseDelayMs?: number;
  /** Longest retry delay (default 30 s). */
  maxDelayMs?: number;
  logger?: Logger;
}

export class WorkQueue<K> {
  private readonly queue: K[] = [];
  private readonly dirty = new Set<K>();
  private readonly processing = new Set<K>();
  private readonly failures = new Map<K, number>();
  private readonly delayed = new Map<K, { at: number; timer: NodeJS.Timeout }>();
  private readonly waiters: ((k: K | undefined) => void)[] = [];
  private shuttingDown = false;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;

  constructor(private readonly opts: WorkQueueOptions = {}) {
    this.baseDelayMs = opts.baseDelayMs ?? 100;
    this.maxDelayMs = opts.maxDelayMs ?? 30_000;
  }

  get length(): number {
    return this.queue.length;
  }

  add(key: K): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return; // done() puts it back
    this.push(key);
  }

  /** Adds the key after ms; an earlier pending add of the same key wins. */
  addAfter(key: K, ms: number): void {
    if (this.shuttingDown) return;
    if (ms <= 0) return this.add(key);
    const at = Date.now() + ms;
    const cur = this.delayed.get(key);
    if (cur && cur.at <= at) return;
    if (cur) clearTimeout(cur.timer);
    const timer = setTimeout(() => {
      this.delayed.delete(key);
      this.add(key);
    }, ms);
    timer.unref();
    this.delayed.set(key, { at, timer });
  }

  /** Adds the key after its backoff, and counts a failure. Returns the delay. */
  addRateLimited(key: K): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    const delay = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.min(n, 30));
    this.addAfter(key, delay);
    return delay;
  }

  /** Clears the key's failure count (after a success). */
  forget(key: K): void {
    this.failures.delete(key);
  }

  failuresOf(key: K): number {
    return this.failures.get(key) ?? 0;
  }

  /** The next key, marked processing; undefined once the queue shuts down. */
  async get(): Promise<K | undefined> {
    if (this.shuttingDown) return undefined;
    const k = this.queue.shift();
    if (k !== undefined) return this.take(k);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  done(key: K): void {
    this.processing.delete(key);
    if (this.dirty.has(key) && !this.shuttingDown) this.push(key);
  }

  shutdown(): void {
    this.shuttingDown = true;
    for (const d of this.delayed.values()) clearTimeout(d.timer);
    this.delayed.clear();
    for (const w of this.waiters.splice(0)) w(undefined);
  }

  /**
   * Runs `workers` loops calling process for each key until signal aborts; resolves when every
   * worker has finished its current key.
   */
  async run(signal: AbortSignal, workers: number, process: Processor<K>): Promise<void> {
    const stop = () => this.shutdown();
    if (signal.aborted) stop();
    signal.addEventListener("abort", stop, { once: true });
    const worker = async () => {
      for (let k = await this.get(); k !== undefined; k = await this.get()) {
        try {
          const res = await process(k, signal);
          this.forget(k);
          if (res?.requeueAfterMs !== undefined) this.addAfter(k, res.requeueAfterMs);
        } catch (e) {
          if (signal.aborted) {
            // Cancelled mid-way: nothing to report, the next start reconciles from scratch.
          } else if (e instanceof TerminalError) {
            this.forget(k);
            this.opts.logger?.error({ key: k, err: e }, "reconcile failed permanently; not retrying");
          } else {
            const delay = this.addRateLimited(k);
            this.opts.logger?.warn({ key: k, err: e, retryInMs: delay, failures: this.failuresOf(k) }, "reconcile failed; retrying");
          }
        } finally {
          this.done(k);
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.max(1, workers) }, worker));
    } finally {
      signal.removeEventListener("abort", stop);
    }
  }

  private push(key: K): void {
    const w = this.waiters.shift();
    if (w) w(this.take(key));
    else this.queue.push(key);
  }

  private take(key: K): K {
    this.dirty.delete(key);
    this.processing.add(key);
    return key;
  }
}
