/*
 * Leader election between server replicas, on the Store contract only (etcd or embedded).
 *
 *   grant own lease ──► txn ifAbsent(key) put key=candidate under lease
 *        │                 │ won                              │ lost
 *        │                 ▼                                  ▼
 *        │             LEADER: lead(signal) runs        FOLLOWER: watch key, note its value
 *        │             until key changes / lease lost   until it is deleted ──► campaign again
 *        │             / resign / lead returns
 *        │                 │ step down: delete key if still ours (ifModRevision)
 *        └─────────────────┘
 *
 * The election keeps its own lease alive with keepAliveOnce every TTL/3: leadership is then tied to
 * this process being alive and reaching the store, which is the point. If the lease is gone
 * (LeaseNotFoundError) or keep-alives have failed for a whole TTL (the store may already have
 * expired it), leadership is reported lost at once, before the store says so: two leaders at a
 * time is worse than none for a moment.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { logger, type Logger } from "../../log/index.js";
import { ifAbsent, ifModRevision, LeaseNotFoundError, type Store } from "../store/index.js";
import { keys } from "../state/index.js";

export interface ElectionOptions {
  /** Lease TTL in seconds (default 10): how long a dead leader blocks the others at most. */
  ttlSeconds?: number;
  /** First retry delay after a store error, doubling to 5 s (default 200 ms). */
  retryMs?: number;
}

export interface LeadershipChange {
  /** Whether this candidate leads now. */
  leading: boolean;
  /** Current leader id as this candidate last saw it, "" if none. */
  leader: string;
  /** Why leadership ended: "resigned", "lease lost", "key changed", "stopped", "lead returned". */
  reason?: string;
}

export class Election {
  readonly key: string;
  private readonly ttl: number;
  private readonly retryMs: number;
  private readonly log: Logger;
  private lease: string | undefined;
  private leaderId = "";
  private leading = false;
  /** After resign(): do not campaign until another candidate has taken the key. */
  private resigned = false;
  /** Ends the current term (leader phase) with a reason. */
  private endTerm: ((reason: string) => void) | undefined;
  private readonly listeners = new Set<(c: LeadershipChange) => void>();
  private running = false;

  constructor(
    private readonly store: Store,
    readonly name: string,
    readonly candidate: string,
    opts: ElectionOptions = {},
  ) {
    this.key = keys.election(name);
    this.ttl = opts.ttlSeconds ?? 10;
    this.retryMs = opts.retryMs ?? 200;
    this.log = logger("election", { election: name, candidate });
  }

  /** Whether this candidate leads now. */
  get isLeader(): boolean {
    return this.leading;
  }

  /** The leader id this candidate last saw ("" if none or not known yet). */
  leader(): string {
    return this.leaderId;
  }

  /** Reads the current leader from the store (undefined if nobody leads). */
  async queryLeader(opts: { signal?: AbortSignal } = {}): Promise<string | undefined> {
    const kv = await this.store.get(this.key, opts);
    return kv ? new TextDecoder().decode(kv.value) : undefined;
  }

  /** Calls fn on every change of leadership; returns the unsubscribe function. */
  onChange(fn: (c: LeadershipChange) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Steps down if leading. The candidate then stays a follower until another candidate has taken
   * the key (so resigning hands leadership over instead of winning it straight back); it campaigns
   * again when that leader goes.
   */
  resign(): void {
    this.resigned = true;
    this.endTerm?.("resigned");
  }

  /**
   * Campaigns until signal aborts. Each time this candidate wins, lead runs with a signal that aborts
   * when leadership is lost. On abort: steps down, revokes the lease, resolves.
   */
  async run(signal: AbortSignal, lead: (signal: AbortSignal) => Promise<void> = waitForAbort): Promise<void> {
    if (this.running) throw new Error(`election ${this.name} is already running for ${this.candidate}`);
    this.running = true;
    const keepAlive = this.keepAliveLoop(signal);
    let backoff = this.retryMs;
    try {
      while (!signal.aborted) {
        try {
          const lease = await this.ensureLease(signal);
          if (!this.resigned) {
            const put = { type: "put" as const, key: this.key, value: new TextEncoder().encode(this.candidate), lease };
            const t = await this.store.txn([ifAbsent(this.key)], [put], [], { signal });
            if (t.succeeded) {
              backoff = this.retryMs;
              await this.term(t.revision, signal, lead);
              continue;
            }
          }
          await this.follow(signal);
          backoff = this.retryMs;
        } catch (e) {
          if (signal.aborted) break;
          if (e instanceof LeaseNotFoundError) this.lease = undefined;
          this.log.warn({ err: e, backoffMs: backoff }, "election store error; retrying");
          await sleep(backoff, undefined, { signal }).catch(() => undefined);
          backoff = Math.min(backoff * 2, 5000);
        }
      }
    } finally {
      await keepAlive;
      const lease = this.lease;
      this.lease = undefined;
      // Revoking also deletes the key if we still hold it: the others need not wait for the TTL.
      if (lease) await this.store.revokeLease(lease).catch((e: unknown) => this.log.warn({ err: e }, "lease revoke failed"));
      this.running = false;
    }
  }

  /** One leadership term: from winning the key at rev until it is lost or given up. */
  private async term(rev: number, signal: AbortSignal, lead: (signal: AbortSignal) => Promise<void>): Promise<void> {
    const term = new AbortController();
    let reason = "stopped";
    const end = (why: string) => {
      if (term.signal.aborted) return;
      reason = why;
      term.abort(new Error(`leadership ended: ${why}`));
    };
    const onAbort = () => end("stopped");
    signal.addEventListener("abort", onAbort, { once: true });
    this.endTerm = end;
    this.set(true, this.candidate);
    this.log.info({ revision: rev }, "became leader");
    // Anything that happens to the key (deleted by lease expiry or by hand) ends the term.
    const watcher = (async () => {
      try {
        for await (const b of this.store.watch(this.key, { fromRevision: rev + 1, signal: term.signal })) {
          if (b.events.some((e) => e.kv.key === this.key)) return end("key changed");
        }
      } catch (e) {
        // Without a watch we cannot tell whether we still hold the key: step down.
        this.log.warn({ err: e }, "leader watch failed");
        end("key changed");
      }
    })();
    try {
      await Promise.race([
        lead(term.signal).then(
          () => end("lead returned"),
          (e: unknown) => {
            this.log.error({ err: e }, "lead failed");
            end("lead returned");
          },
        ),
        new Promise<void>((resolve) => term.signal.addEventListener("abort", () => resolve(), { once: true })),
      ]);
    } finally {
      end(reason);
      signal.removeEventListener("abort", onAbort);
      this.endTerm = undefined;
      await watcher;
      // Give the key up if it is still the one we wrote, so the others need not wait for the TTL.
      if (reason !== "key changed" && reason !== "lease lost") {
        await this.store
          .txn([ifModRevision(this.key, rev)], [{ type: "delete", key: this.key }])
          .catch((e: unknown) => this.log.warn({ err: e }, "step-down delete failed"));
      }
      if (reason === "lead returned") this.resigned = true;
      this.set(false, "", reason);
      this.log.info({ reason }, "leadership ended");
    }
  }

  /** Follows the current leader until the key is deleted (and we have not resigned). */
  private async follow(signal: AbortSignal): Promise<void> {
    const r = await this.store.range(this.key, { signal });
    const kv = r.kvs.find((k) => k.key === this.key);
    this.set(false, kv ? new TextDecoder().decode(kv.value) : "");
    if (kv) this.resigned &&= new TextDecoder().decode(kv.value) === this.candidate;
    if (!kv && !this.resigned) return; // vacant: campaign now
    for await (const b of this.store.watch(this.key, { fromRevision: r.revision + 1, signal })) {
      for (const e of b.events) {
        if (e.kv.key !== this.key) continue;
        if (e.type === "put") {
          const id = new TextDecoder().decode(e.kv.value);
          if (id !== this.candidate) this.resigned = false;
          this.set(false, id);
        } else {
          this.set(false, "");
          if (!this.resigned) return;
        }
      }
    }
  }

  private async ensureLease(signal: AbortSignal): Promise<string> {
    this.lease ??= await this.store.grantLease(this.ttl, { signal });
    return this.lease;
  }

  private async keepAliveLoop(signal: AbortSignal): Promise<void> {
    const every = (this.ttl * 1000) / 3;
    let lastOk = performance.now();
    while (!signal.aborted) {
      await sleep(every, undefined, { signal }).catch(() => undefined);
      if (signal.aborted) return;
      const lease = this.lease;
      if (!lease) {
        lastOk = performance.now();
        continue;
      }
      try {
        await this.store.keepAliveOnce(lease, { signal });
        lastOk = performance.now();
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof LeaseNotFoundError) {
          this.log.warn({ lease }, "election lease lost");
          if (this.lease === lease) this.lease = undefined;
          this.endTerm?.("lease lost");
        } else if (performance.now() - lastOk > this.ttl * 1000) {
          // The store may already have expired the lease: stop leading rather than risk two leaders.
          this.log.warn({ err: e, lease }, "lease not renewed for a whole ttl");
          this.endTerm?.("lease lost");
        }
      }
    }
  }

  private set(leading: boolean, leader: string, reason?: string): void {
    if (this.leading === leading && this.leaderId === leader) return;
    this.leading = leading;
    this.leaderId = leader;
    const change: LeadershipChange = { leading, leader };
    if (reason !== undefined) change.reason = reason;
    for (const fn of this.listeners) {
      try {
        fn(change);
      } catch (e) {
        this.log.error({ err: e }, "leadership listener failed");
      }
    }
  }
}

function waitForAbort(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}
