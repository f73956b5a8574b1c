/*
 * Graceful stops in flight, beside the work queue's workers rather than in them. A stop waits for
 * the guest for up to its timeout (an hour at most); if it held a worker for that long, four slow
 * instances would hold all of a node's workers and nothing else would be created, started or
 * deleted there. So a worker only starts a stop and returns; the wait runs on its own, one per
 * instance, as kubelet runs each pod's termination (terminationGracePeriodSeconds) in that pod's
 * own worker and Nomad each task's kill_timeout in that task's runner.
 *
 *   reconcile ──begin(name, uid, generation)──► stop in flight ──settles──► wake(name): reconcile again
 *        ▲                                          │
 *        └── next reconcile of the same name: ──────┘
 *              same uid and generation, no delete → leave it running (nothing to do yet)
 *              anything else (delete, new generation, unassigned) → abort it, wait until it
 *              has settled, then reconcile the new desired state at once
 *
 * A stop that fails is retried by the reconcile it wakes, after a per-instance backoff.
 */
import type { Logger } from "../../pkg/log/index.js";

/** What a stop was started for: the instance (uid) at one generation of its assignment. */
export interface StopFor {
  uid: string;
  generation: bigint;
}

interface InFlight extends StopFor {
  ctl: AbortController;
  done: Promise<void>;
}

/** The desired state changed while an instance was stopping: its stop was abandoned. */
export class StopSupersededError extends Error {
  override name = "StopSupersededError";
  constructor(
    readonly instance: string,
    why: string,
  ) {
    super(`stop of instance ${instance} superseded: ${why}`);
  }
}

export interface StopsOptions {
  /** Reconcile the instance again after `afterMs` (0: now). */
  wake: (name: string, afterMs: number) => void;
  log: Logger;
  /** First retry delay after a failed stop (default 1 s), doubled up to maxRetryMs (default 30 s). */
  retryMs?: number;
  maxRetryMs?: number;
}

export class Stops {
  private readonly inFlight = new Map<string, InFlight>();
  private readonly failures = new Map<string, number>();

  constructor(private readonly opts: StopsOptions) {}

  get size(): number {
    return this.inFlight.size;
  }

  /**
   * Starts `stop` for `name` outside the caller's worker. `parent` (the agent's signal) and a
   * later supersede() abort it. Returns at once.
   */
  begin(name: string, what: StopFor, parent: AbortSignal, stop: (signal: AbortSignal) => Promise<unknown>): void {
    if (this.inFlight.has(name)) throw new Error(`instance ${name} is already stopping`);
    const ctl = new AbortController();
    const onParent = () => ctl.abort(parent.reason);
    if (parent.aborted) onParent();
    else parent.addEventListener("abort", onParent, { once: true });
    const log = this.opts.log.child({ instance: name });
    const done = (async () => {
      try {
        await stop(ctl.signal);
        this.failures.delete(name);
        log.info("instance stopped");
        this.opts.wake(name, 0);
      } catch (e) {
        if (parent.aborted) return; // the agent is stopping: the next one reconciles from scratch
        if (e instanceof StopSupersededError) {
          log.info({ reason: e.message }, "stop abandoned: the desired state changed");
          return; // the superseding reconcile carries on
        }
        const n = (this.failures.get(name) ?? 0) + 1;
        this.failures.set(name, n);
        const retryInMs = Math.min(this.opts.maxRetryMs ?? 30_000, (this.opts.retryMs ?? 1000) * 2 ** Math.min(n - 1, 20));
        log.warn({ err: e, retryInMs, failures: n }, "stop failed; retrying");
        this.opts.wake(name, retryInMs);
      } finally {
        parent.removeEventListener("abort", onParent);
        if (this.inFlight.get(name)?.ctl === ctl) this.inFlight.delete(name);
      }
    })();
    this.inFlight.set(name, { ...what, ctl, done });
  }

  /**
   * Settles the stop in flight for `name` against what is desired now: `keep` is the instance and
   * generation still wanted stopped (undefined: none, e.g. deleted or unassigned). A stop for
   * exactly that is left running and true returned; any other is aborted and awaited (false).
   */
  async supersede(name: string, keep: StopFor | undefined, why: string): Promise<boolean> {
    const s = this.inFlight.get(name);
    if (!s) return false;
    if (keep && keep.uid === s.uid && keep.generation === s.generation) return true;
    s.ctl.abort(new StopSupersededError(name, why));
    await s.done;
    return false;
  }

  /** Forgets failure counts of instances no longer assigned. */
  prune(assigned: ReadonlyMap<string, unknown>): void {
    for (const n of this.failures.keys()) if (!assigned.has(n)) this.failures.delete(n);
  }

  /** Waits for every stop in flight (they abort with the agent's signal). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.inFlight.values()].map((s) => s.done));
  }
}
