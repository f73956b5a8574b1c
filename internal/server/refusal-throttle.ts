/*
 * A connection that keeps sending what the server refuses is slowed down, not served at full
 * speed: every refused answer (HTTP status 400 and up, or a gRPC status other than OK in the
 * headers) takes a token from the connection's bucket, and while the bucket is empty each of its
 * requests waits for the next token before it is handled. The wait is a timer: it costs the server
 * nothing, so garbage cannot take the CPU an honest client needs (nginx's limit_req, applied to
 * refusals only). Honest clients are refused rarely and never wait.
 *
 *   request ──bucket has a token? ──yes──► handled ──refused? ──► one token taken
 *                  └──no──► wait (1 - tokens) / rate seconds ──► handled
 *
 * Per connection, since a client is its address only until the cluster has identities and many
 * clients share an address (a NAT, every local tool on 127.0.0.1).
 */
import type { Handler } from "./http.js";

type Req = Parameters<Handler>[0];
type Res = Parameters<Handler>[1];

export interface RefusalLimits {
  /** Refusals a connection may collect at once (default 20)… */
  burst: number;
  /** …and per second after that (default 10); past it, its requests wait. */
  perSecond: number;
}

export const DEFAULT_REFUSAL_LIMITS: RefusalLimits = { burst: 20, perSecond: 10 };

interface Bucket {
  tokens: number;
  at: number;
}

export class RefusalThrottle {
  private readonly buckets = new WeakMap<object, Bucket>();
  readonly limits: RefusalLimits;

  constructor(
    limits: Partial<RefusalLimits> = {},
    private readonly now: () => number = () => performance.now(),
  ) {
    this.limits = { ...DEFAULT_REFUSAL_LIMITS, ...limits };
  }

  /** The connection a request came on: the socket, or for HTTP/2 its session. */
  private static connection(req: Req): object {
    return "stream" in req && req.stream ? (req.stream.session ?? req.socket) : req.socket;
  }

  private refill(b: Bucket): void {
    const t = this.now();
    b.tokens = Math.min(this.limits.burst, b.tokens + ((t - b.at) / 1000) * this.limits.perSecond);
    b.at = t;
  }

  /** How long this request must wait before it is handled (ms); 0 for a connection in budget. */
  delay(req: Req): number {
    const b = this.buckets.get(RefusalThrottle.connection(req));
    if (!b) return 0;
    this.refill(b);
    return b.tokens >= 1 ? 0 : Math.ceil(((1 - b.tokens) / this.limits.perSecond) * 1000);
  }

  /** Counts the answer against its connection once it is sent, if it was a refusal. */
  watch(req: Req, res: Res): void {
    res.once("finish", () => {
      const grpc = res.getHeader("grpc-status");
      const refused = res.statusCode >= 400 || (grpc !== undefined && String(grpc) !== "0");
      if (!refused) return;
      const conn = RefusalThrottle.connection(req);
      let b = this.buckets.get(conn);
      if (!b) {
        b = { tokens: this.limits.burst, at: this.now() };
        this.buckets.set(conn, b);
      }
      this.refill(b);
      b.tokens -= 1;
    });
  }
}
