// The token GC: which tokens it forgets (a table), and a pass over a real store that deletes
// exactly those and leaves a token changed since it was read.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { ApiTokenRecordSchema, type ApiTokenRecord } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { codecs, keys } from "../../../pkg/cluster/state/index.js";
import { openEmbeddedStore } from "../../../pkg/cluster/store/index.js";
import { logger } from "../../../pkg/log/index.js";
import { Informer } from "../informer.js";
import { TOKEN_RETENTION_MS, TokenGc, tokensToForget } from "./token-gc.js";

const NOW = Date.UTC(2026, 11, 4);
const DAY = 86_400_000;
const token = (id: string, expiresIn: number, revokedAgo?: number): ApiTokenRecord =>
  create(ApiTokenRecordSchema, {
    id,
    user: "u",
    roles: ["viewer"],
    createTime: timestampFromMs(NOW - 100 * DAY),
    expireTime: timestampFromMs(NOW + expiresIn),
    revoked: revokedAgo !== undefined,
    ...(revokedAgo !== undefined ? { revokeTime: timestampFromMs(NOW - revokedAgo) } : {}),
  });

describe("token gc", () => {
  it("forgets tokens revoked or expired at least a week ago, and no other", () => {
    const cases: [ApiTokenRecord, boolean][] = [
      [token("live", 30 * DAY), false],
      [token("expired-now", -1), false],
      [token("expired-6d", -6 * DAY), false],
      [token("expired-7d", -TOKEN_RETENTION_MS), true],
      [token("revoked-1d", 30 * DAY, DAY), false],
      [token("revoked-8d", 30 * DAY, 8 * DAY), true],
      // Revoked long ago but with no time recorded (made before revoke_time): its expiry decides.
      [create(ApiTokenRecordSchema, { ...token("revoked-untimed", 30 * DAY), revoked: true }), false],
    ];
    const forgotten = tokensToForget(
      cases.map(([t]) => t),
      NOW,
    ).map((t) => t.id);
    assert.deepEqual(
      forgotten,
      cases.filter(([, f]) => f).map(([t]) => t.id),
    );
  });

  it("a pass deletes exactly those from the store, comparing what it read", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hv-token-gc-"));
    const store = await openEmbeddedStore(join(dir, "store"), { sync: false });
    try {
      const log = logger("token-gc-test");
      for (const t of [token("keep", DAY), token("gone", -8 * DAY), token("changed", -8 * DAY)])
        await store.put(keys.apiToken(t.id), codecs.apiToken.encode(t));
      // The servers' copy as read now (what the informer holds).
      const read = await store.range(keys.apiTokens);
      const items = new Map(read.kvs.map((kv) => [kv.key, { value: codecs.apiToken.decode(kv.value), modRevision: kv.modRevision }]));
      // Rewritten after it was read: the GC's compare fails and it is left for the next pass.
      await store.put(keys.apiToken("changed"), codecs.apiToken.encode(token("changed", -8 * DAY)));
      const gc = new TokenGc(store, { items } as unknown as Informer<ApiTokenRecord>, log, () => NOW);
      assert.equal(await gc.pass(), 1);
      assert.ok(await store.get(keys.apiToken("keep")));
      assert.equal(await store.get(keys.apiToken("gone")), undefined);
      assert.ok(await store.get(keys.apiToken("changed")));
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
