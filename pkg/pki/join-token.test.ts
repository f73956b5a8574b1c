// Join tokens: the string format both ways, and the join decision as a table.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  checkJoin,
  formatJoinToken,
  hashSecret,
  JoinTokenFormatError,
  newJoinToken,
  parseJoinToken,
  type JoinTokenState,
} from "./index.js";

const HASH = "ab".repeat(32);
const SECRET = "0123456789abcdef0123456789abcdef";

describe("join tokens", () => {
  it("formats and parses HV10<ca hash>::<id>.<secret>", () => {
    const t = newJoinToken(HASH);
    assert.match(t.id, /^[a-z0-9]{6}$/);
    assert.match(t.secret, /^[0-9a-f]{32}$/);
    const s = formatJoinToken(t);
    assert.equal(s, `HV10${HASH}::${t.id}.${t.secret}`);
    assert.deepEqual(parseJoinToken(s), t);
    assert.deepEqual(parseJoinToken(` ${s}\n`), t, "surrounding whitespace (a pasted line) is dropped");
    assert.notEqual(newJoinToken(HASH).secret, t.secret);
  });

  it("refuses malformed tokens, naming the part and never quoting the token", () => {
    const cases: [string, RegExp][] = [
      ["", /^does not start with HV10$/],
      [`K10${HASH}::abc123.${SECRET}`, /^does not start with HV10$/],
      [`HV10${HASH}abc123.${SECRET}`, /^has no "::"/],
      [`HV10${HASH.slice(2)}::abc123.${SECRET}`, /^ca hash must be 64 lowercase hex characters$/],
      [`HV10${HASH.toUpperCase()}::abc123.${SECRET}`, /^ca hash must be 64/],
      [`HV10${HASH}::abc123${SECRET}`, /^has no "\." between the id and the secret$/],
      [`HV10${HASH}::ABC123.${SECRET}`, /^id must be 6 lowercase letters or digits$/],
      [`HV10${HASH}::abc12.${SECRET}`, /^id must be 6/],
      [`HV10${HASH}::abc123.${SECRET}0`, /^secret must be 32 lowercase hex characters$/],
      [`HV10${HASH}::abc123.${SECRET.slice(1)}g`, /^secret must be 32/],
    ];
    for (const [token, want] of cases) {
      assert.throws(
        () => parseJoinToken(token),
        (e) => e instanceof JoinTokenFormatError && want.test(e.message) && !e.message.includes(SECRET.slice(0, 8)),
        token,
      );
    }
  });

  it("decides a join", () => {
    const now = new Date("2026-06-01T12:00:00Z");
    const base: JoinTokenState = {
      secretSha256: hashSecret(SECRET),
      node: "",
      expireTime: timestampFromMs(now.getTime() + 60_000),
      maxUses: 2,
      used: 1,
      revoked: false,
    };
    const req = { now, node: "worker-1", secret: SECRET };
    const cases: [string, JoinTokenState | undefined, Partial<typeof req>, string][] = [
      ["valid", base, {}, "ok"],
      ["unlimited uses", { ...base, maxUses: 0, used: 1000 }, {}, "ok"],
      ["scoped to this node", { ...base, node: "worker-1" }, {}, "ok"],
      ["unknown", undefined, {}, "unknown"],
      ["wrong secret", base, { secret: SECRET.replace("0", "1") }, "wrong-secret"],
      ["wrong secret wins over revoked", { ...base, revoked: true }, { secret: "f".repeat(32) }, "wrong-secret"],
      ["revoked", { ...base, revoked: true }, {}, "revoked"],
      ["expired at the instant", { ...base, expireTime: timestampFromMs(now.getTime()) }, {}, "expired"],
      ["expired", { ...base, expireTime: timestampFromMs(now.getTime() - 1) }, {}, "expired"],
      ["no expiry is expired", { ...base, expireTime: undefined }, {}, "expired"],
      ["used up", { ...base, used: 2 }, {}, "used-up"],
      ["scoped to another node", { ...base, node: "worker-2" }, {}, "wrong-node"],
    ];
    for (const [what, record, change, want] of cases) {
      const d = checkJoin(record, { ...req, ...change });
      assert.equal(d.ok ? "ok" : d.reason, want, what);
    }
  });
});
