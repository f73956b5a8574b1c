/*
 * Forgets API tokens that can never be used again: revoked or expired for longer than
 * TOKEN_RETENTION_MS. Every server keeps a copy of apitokens/, so tokens that only pile up would
 * cost every server memory and every relist time; kept a while, they still show in `token list`
 * (as revoked or expired) for whoever wonders why a script stopped working. Leader only.
 *
 *   every TOKEN_GC_PERIOD_MS: apitokens/ (the informer's copy) ──► decide ──► txn[mod = read] delete
 */
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { ApiTokenRecord } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { ifModRevision, type Store } from "../../../pkg/cluster/store/index.js";
import type { Logger } from "../../../pkg/log/index.js";
import type { Informer } from "../informer.js";
import { sleep } from "../informer.js";

export const TOKEN_RETENTION_MS = 7 * 86_400_000;
const TOKEN_GC_PERIOD_MS = 3_600_000;

/** When `t` stopped being usable, or undefined while it is. */
function deadSince(t: ApiTokenRecord, now: number): number | undefined {
  const expires = t.expireTime ? timestampMs(t.expireTime) : 0;
  if (t.revoked) return Math.min(expires, t.revokeTime ? timestampMs(t.revokeTime) : expires);
  return expires <= now ? expires : undefined;
}

/** The tokens to forget now. */
export function tokensToForget(tokens: readonly ApiTokenRecord[], now: number): ApiTokenRecord[] {
  return tokens.filter((t) => {
    const since = deadSince(t, now);
    return since !== undefined && now - since >= TOKEN_RETENTION_MS;
  });
}

export class TokenGc {
  constructor(
    private readonly store: Store,
    private readonly tokens: Informer<ApiTokenRecord>,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** One pass: how many it forgot (a token changed since read is left for the next). */
  async pass(signal?: AbortSignal): Promise<number> {
    const items = [...this.tokens.items.entries()];
    const forget = new Set(
      tokensToForget(
        items.map(([, v]) => v.value),
        this.now(),
      ).map((t) => t.id),
    );
    let n = 0;
    for (const [key, { value, modRevision }] of items) {
      if (!forget.has(value.id)) continue;
      const res = await this.store.txn([ifModRevision(key, modRevision)], [{ type: "delete", key }], [], signal ? { signal } : {});
      if (res.succeeded) n++;
    }
    if (n > 0) this.log.info({ tokens: n }, "forgot revoked and expired API tokens");
    return n;
  }

  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await this.pass(signal).catch((e: unknown) => {
        if (!signal.aborted) this.log.warn({ err: e }, "token gc pass failed");
      });
      await sleep(TOKEN_GC_PERIOD_MS, signal).catch(() => undefined);
    }
  }
}
