/*
 * Per-client bounds on what a client can hold open or ask for repeatedly. A client is its address
 * until the cluster has identities (then it will be the caller's identity).
 *
 *   WatchInstances ─hold("watch")──► at most maxWatches open per client   ─► else ResourceExhausted
 *   GetInstanceLogs follow ─hold("logs")─► at most maxLogFollows per client ─► else ResourceExhausted
 *   CreateConsoleTicket ─take()──► token bucket: ticketBurst, refilled ticketsPerMinute
 *                                   (each ticket is an etcd lease)    ─► else ResourceExhausted
 *
 * A watch's own queue is bounded separately (watchBacklog, in the watch handler): a watcher that
 * stops reading is ended with ResourceExhausted instead of growing the server's memory.
 */
import { Code, ConnectError, createContextKey, type HandlerContext } from "@connectrpc/connect";

export interface ClientLimitSettings {
  /** Open WatchInstances streams per client (default 32). */
  maxWatches: number;
  /** Open followed log streams per client (default 16). */
  maxLogFollows: number;
  /** Console tickets a client may get at once (default 20)… */
  ticketBurst: number;
  /** …and per minute after that (default 30). */
  ticketsPerMinute: number;
  /** Messages a watch may have queued beyond its initial list before it is ended (default 1,000). */
  watchBacklog: number;
}

export const DEFAULT_CLIENT_LIMITS: ClientLimitSettings = {
  maxWatches: 32,
  maxLogFollows: 16,
  ticketBurst: 20,
  ticketsPerMinute: 30,
  watchBacklog: 1000,
};

/** The caller's address, set for every request by the server (contextValues). */
export const clientAddress = createContextKey<string>("unknown", { description: "the client's address" });

/** "::ffff:127.0.0.1" → "127.0.0.1", so one client is one key whichever socket family it used. */
export function normalizeAddress(a: string | undefined): string {
  if (!a) return "unknown";
  return a.startsWith("::ffff:") ? a.slice(7) : a;
}

type Held = "watch" | "logs";

interface Bucket {
  tokens: number;
  at: number;
}

export class ClientLimits {
  readonly settings: ClientLimitSettings;
  private readonly open = new Map<string, number>();
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    settings: Partial<ClientLimitSettings> = {},
    private readonly now: () => number = () => performance.now(),
  ) {
    this.settings = { ...DEFAULT_CLIENT_LIMITS, ...settings };
  }

  /** Counts one open stream of `kind` for the caller; returns its release (call it once). */
  hold(hctx: HandlerContext, kind: Held): () => void {
    const client = hctx.values.get(clientAddress);
    const max = kind === "watch" ? this.settings.maxWatches : this.settings.maxLogFollows;
    const key = `${kind} ${client}`;
    const n = this.open.get(key) ?? 0;
    if (n >= max)
      throw new ConnectError(
        `client ${client} has ${n} ${kind === "watch" ? "watches" : "followed logs"} open, the most one client may; close one first`,
        Code.ResourceExhausted,
      );
    this.open.set(key, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.open.get(key) ?? 1) - 1;
      if (left <= 0) this.open.delete(key);
      else this.open.set(key, left);
    };
  }

  /** Takes one console ticket from the caller's bucket, or refuses. */
  takeTicket(hctx: HandlerContext): void {
    const client = hctx.values.get(clientAddress);
    const { ticketBurst, ticketsPerMinute } = this.settings;
    const t = this.now();
    const b = this.buckets.get(client) ?? { tokens: ticketBurst, at: t };
    b.tokens = Math.min(ticketBurst, b.tokens + ((t - b.at) / 60_000) * ticketsPerMinute);
    b.at = t;
    if (b.tokens < 1) {
      this.buckets.set(client, b);
      const wait = Math.ceil(((1 - b.tokens) * 60) / ticketsPerMinute);
      throw new ConnectError(
        `client ${client} asked for console tickets faster than ${ticketsPerMinute} a minute; try again in ${wait} s`,
        Code.ResourceExhausted,
      );
    }
    b.tokens -= 1;
    this.buckets.set(client, b);
    // Full buckets carry no state: forget them, so the map holds only recent askers.
    if (this.buckets.size > 10_000) for (const [k, v] of this.buckets) if (v.tokens >= ticketBurst - 1) this.buckets.delete(k);
  }

  /** Open streams by kind, for tests and metrics. */
  held(kind: Held): number {
    let n = 0;
    for (const [k, v] of this.open) if (k.startsWith(`${kind} `)) n += v;
    return n;
  }
}
