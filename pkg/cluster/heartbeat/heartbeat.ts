/*
 * The agent's side of liveness: nodes/<node>/alive lives under a lease that the agent keeps alive.
 * If the agent dies, the lease expires after its TTL and the key vanishes: that is how the server
 * learns a node is gone, with no message from the dead.
 *
 *   grant(ttl) ──► put nodes/<node>/alive under lease ──► every ttl/3: keepAliveOnce
 *        ▲                                                │
 *        └──────────── LeaseNotFoundError ◄───────────────┘   (expired while we were away:
 *                                                              new lease, put alive again)
 *   stop() ──► revoke the lease (the node is NotReady at once, not after the TTL)
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { setTimeout as sleep } from "node:timers/promises";
import { LivenessSchema } from "../../../api/gen/hypervisor/v1/store_pb.js";
import { logger as rootLogger, type Logger } from "../../log/index.js";
import { LeaseNotFoundError, type Store } from "../store/index.js";
import { keys } from "../state/index.js";

export interface HeartbeatOptions {
  /** Lease TTL in seconds (default 10); keep-alives go out every ttl/3. */
  ttlSeconds?: number;
  /** Revoke the lease on stop(), so the node turns NotReady at once (default true). */
  revokeOnStop?: boolean;
  logger?: Logger;
}

export class Heartbeat {
  readonly ttlSeconds: number;
  private leaseId: string | undefined;
  private readonly ctl = new AbortController();
  private loop: Promise<void> | undefined;
  private readonly log: Logger;
  private leaseChanges = 0;
  private everAlive = false;

  constructor(
    private readonly store: Store,
    readonly node: string,
    private readonly opts: HeartbeatOptions = {},
  ) {
    this.ttlSeconds = opts.ttlSeconds ?? 10;
    if (!(this.ttlSeconds >= 1)) throw new RangeError(`heartbeat ttl must be at least 1 second, got ${this.ttlSeconds}`);
    this.log = opts.logger ?? rootLogger("heartbeat", { node });
  }

  /** The current lease id, once started. */
  get lease(): string | undefined {
    return this.leaseId;
  }

  /** How many times a lost lease was replaced (tests and metrics). */
  get regrants(): number {
    return this.leaseChanges;
  }

  /** Makes the node alive (resolves once alive/<node> is written) and keeps it so until stop(). */
  async start(signal?: AbortSignal): Promise<void> {
    if (this.loop) throw new Error("heartbeat already started");
    const s = signal ? AbortSignal.any([signal, this.ctl.signal]) : this.ctl.signal;
    await this.establish(s);
    this.loop = this.keepAlive(s);
  }

  async stop(): Promise<void> {
    this.ctl.abort();
    await this.loop;
    const lease = this.leaseId;
    if (lease && this.opts.revokeOnStop !== false) {
      await this.store
        .revokeLease(lease)
        .catch((e: unknown) => this.log.warn({ err: e }, "could not revoke the heartbeat lease; it will expire"));
    }
  }

  private async establish(signal: AbortSignal): Promise<void> {
    const lease = await this.store.grantLease(this.ttlSeconds, { signal });
    const value = toBinary(
      LivenessSchema,
      create(LivenessSchema, { node: this.node, leaseId: BigInt(lease), ttlSeconds: BigInt(this.ttlSeconds) }),
    );
    try {
      await this.store.put(keys.alive(this.node), value, { signal, lease });
    } catch (e) {
      await this.store.revokeLease(lease).catch(() => undefined);
      throw e;
    }
    if (this.everAlive) this.leaseChanges++;
    this.everAlive = true;
    this.leaseId = lease;
    this.log.debug({ lease }, "node alive");
  }

  private async keepAlive(signal: AbortSignal): Promise<void> {
    const period = (this.ttlSeconds * 1000) / 3;
    let wait = period;
    while (!signal.aborted) {
      try {
        await sleep(wait, undefined, { signal });
      } catch {
        return;
      }
      try {
        if (this.leaseId === undefined) await this.establish(signal);
        else await this.store.keepAliveOnce(this.leaseId, { signal });
        wait = period;
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof LeaseNotFoundError) {
          // We were away longer than the TTL (paused, partitioned) and the node went NotReady;
          // a fresh lease makes it Ready again.
          this.log.warn({ lease: this.leaseId }, "heartbeat lease expired; granting a new one");
          this.leaseId = undefined;
          wait = 0;
        } else {
          this.log.warn({ err: e }, "heartbeat keep-alive failed; retrying");
          // Retry sooner than a full period: two missed periods are already 2/3 of the TTL.
          wait = Math.min(period, 1000);
        }
      }
    }
  }
}
