// IdentityService through the Connect protocol in memory (createRouterTransport), on the embedded
// store and a real etcd: joins that work, every refusal with its code and nothing written, node
// name binding, revocation, and a used-up count that holds when joins race.
import { after, before, beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import { IdentityService, JoinTokenRecordSchema, NodeBindingSchema } from "../../api/gen/hypervisor/v1/identity_pb.js";
import { openEtcdStore } from "../../pkg/cluster/etcd/index.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import {
  caHash,
  createCa,
  formatJoinToken,
  generateKeyAndCsr,
  identityOf,
  parseCa,
  parseJoinToken,
  type CertificateAuthority,
} from "../../pkg/pki/index.js";
import { startEtcd, type EtcdProcess } from "../../test/support/etcd.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { identityService } from "./identity-service.js";

const SECRET_A = "a".repeat(43);
const SECRET_B = "b".repeat(43);

async function csrFor(node: string): Promise<string> {
  return (await generateKeyAndCsr(`node:${node}`)).csrPem;
}

/** Expects a ConnectError with this code and a message matching `message`. */
async function refused(p: Promise<unknown>, code: Code, message: RegExp): Promise<void> {
  await assert.rejects(p, (e) => {
    assert.ok(e instanceof ConnectError, String(e));
    assert.equal(Code[e.code], Code[code], e.rawMessage);
    assert.match(e.rawMessage, message);
    return true;
  });
}

for (const kind of ["embedded", "etcd"] as const)
  describe(`identity service on the ${kind} store`, () => {
    let dir: string;
    let etcd: EtcdProcess | undefined;
    let store: Store;
    let ca: CertificateAuthority;
    let clock: Date;
    let api: Client<typeof IdentityService>;

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), "hv-identity-"));
      if (kind === "etcd") {
        etcd = await startEtcd();
        store = await openEtcdStore({ endpoints: [etcd.endpoint] });
      } else {
        store = await openEmbeddedStore(join(dir, "store"));
      }
      const made = await createCa();
      ca = await parseCa(made.certPem, made.keyPem);
      const transport = createRouterTransport((router) => {
        router.service(IdentityService, identityService({ store, ca, nodeCertTtlSeconds: 3600, now: () => clock }));
      });
      api = createClient(IdentityService, transport);
    });

    after(async () => {
      await store.close();
      await etcd?.stop();
      await rm(dir, { recursive: true, force: true });
    });

    beforeEach(async () => {
      clock = new Date();
      await store.deletePrefix(keys.joinTokens);
      await store.deletePrefix(keys.nodeBindings);
    });

    const newToken = async (req: Parameters<typeof api.createJoinToken>[0] = {}) =>
      (await api.createJoinToken({ ttlSeconds: 600, ...req })).token;

    it("serves the CA, and makes tokens that pin it and are stored only as a hash", async () => {
      const { caPem } = await api.getCA({});
      assert.equal(caPem, ca.certPem);
      const res = await api.createJoinToken({ node: "worker-1", ttlSeconds: 600, maxUses: 3, description: "rack 4" });
      const t = parseJoinToken(res.token);
      assert.equal(t.caHash, caHash(caPem));
      assert.equal(res.joinToken?.id, t.id);
      const kv = await store.get(keys.joinToken(t.id));
      assert.ok(kv);
      assert.ok(!Buffer.from(kv.value).includes(Buffer.from(t.secret)), "the secret is not in the store");
      const rec = fromBinary(JoinTokenRecordSchema, kv.value);
      assert.equal(rec.node, "worker-1");
      assert.equal(rec.maxUses, 3);
      assert.equal(rec.used, 0);
      assert.equal(rec.description, "rack 4");
      assert.equal(timestampDate(rec.expireTime!).getTime(), clock.getTime() + 600_000);
      const { joinTokens } = await api.listJoinTokens({});
      assert.deepEqual(
        joinTokens.map((j) => [j.id, j.node, j.maxUses, j.used, j.revoked]),
        [[t.id, "worker-1", 3, 0, false]],
      );
      assert.ok(!JSON.stringify(joinTokens, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v)).includes(t.secret));
    });

    it("defaults a token's lifetime to 24 h", async () => {
      const t = parseJoinToken((await api.createJoinToken({})).token);
      const rec = fromBinary(JoinTokenRecordSchema, (await store.get(keys.joinToken(t.id)))!.value);
      assert.equal(timestampDate(rec.expireTime!).getTime(), clock.getTime() + 24 * 3600_000);
    });

    it("joins a node: its certificate for node:<name> from the CA, the use counted, the name bound", async () => {
      const token = await newToken({ maxUses: 2 });
      const { keyPem, csrPem } = await generateKeyAndCsr("node:worker-1");
      const res = await api.join({ token, node: "worker-1", csrPem, nodeSecret: SECRET_A });
      assert.equal(res.caPem, ca.certPem);
      const cert = new X509Certificate(res.certPem);
      assert.equal(cert.verify(new X509Certificate(ca.certPem).publicKey), true);
      assert.equal(cert.checkPrivateKey(createPrivateKey(keyPem)), true);
      assert.deepEqual(identityOf(res.certPem), { kind: "node", name: "worker-1" });
      assert.equal(timestampDate(res.expireTime!).getTime(), new Date(cert.validTo).getTime());
      assert.equal(new Date(cert.validTo).getTime(), Math.floor(clock.getTime() / 1000) * 1000 + 3600_000);
      const { id } = parseJoinToken(token);
      const rec = fromBinary(JoinTokenRecordSchema, (await store.get(keys.joinToken(id)))!.value);
      assert.equal(rec.used, 1);
      const binding = fromBinary(NodeBindingSchema, (await store.get(keys.nodeBinding("worker-1")))!.value);
      assert.equal(binding.node, "worker-1");
      assert.equal(binding.tokenId, id);
      assert.equal(Buffer.from(binding.secretSha256).length, 32);
      // The same agent (same node secret) may join again, e.g. after losing its certificate.
      await api.join({ token, node: "worker-1", csrPem: await csrFor("worker-1"), nodeSecret: SECRET_A });
      const again = fromBinary(JoinTokenRecordSchema, (await store.get(keys.joinToken(id)))!.value);
      assert.equal(again.used, 2);
    });

    it("refuses a second agent claiming a joined node's name", async () => {
      const token = await newToken();
      await api.join({ token, node: "worker-1", csrPem: await csrFor("worker-1"), nodeSecret: SECRET_A });
      const rev = await store.revision();
      await refused(
        api.join({ token, node: "worker-1", csrPem: await csrFor("worker-1"), nodeSecret: SECRET_B }),
        Code.AlreadyExists,
        /^node: "worker-1" is already joined by another agent/,
      );
      assert.equal(await store.revision(), rev, "nothing written");
    });

    it("refuses bad joins with the right code and writes nothing", async () => {
      const token = await newToken({ maxUses: 1 });
      const { id, secret } = parseJoinToken(token);
      const scoped = await newToken({ node: "worker-9" });
      const expired = await newToken({ ttlSeconds: 1 });
      const revoked = await newToken();
      await api.revokeJoinToken({ id: parseJoinToken(revoked).id });
      const usedUp = await newToken({ maxUses: 1 });
      await api.join({ token: usedUp, node: "worker-8", csrPem: await csrFor("worker-8"), nodeSecret: SECRET_B });
      clock = new Date(clock.getTime() + 1000);
      const otherCa = caHash((await createCa()).certPem);
      const csr = await csrFor("worker-1");
      const good = { token, node: "worker-1", csrPem: csr, nodeSecret: SECRET_A };
      const rev = await store.revision();
      const cases: [string, Partial<typeof good>, Code, RegExp][] = [
        ["malformed token", { token: "K10abc" }, Code.InvalidArgument, /^token: does not start with HV10$/],
        ["bad secret format", { token: token.slice(0, -1) }, Code.InvalidArgument, /^token: secret must be 32 lowercase hex/],
        ["bad node name", { node: "Worker_1" }, Code.InvalidArgument, /^node: "Worker_1" is not a valid name/],
        [
          "short node secret",
          { nodeSecret: "short" },
          Code.InvalidArgument,
          /^node_secret: must be 32 to 256 characters .* \(got 5 characters\)$/,
        ],
        ["no csr", { csrPem: "" }, Code.InvalidArgument, /^csr_pem: is required$/],
        ["bad csr", { csrPem: "junk" }, Code.InvalidArgument, /^csr_pem: csr is not a PEM certificate request$/],
        [
          "csr for another name",
          { csrPem: await csrFor("worker-2") },
          Code.InvalidArgument,
          /^csr_pem: csr subject CN must be exactly "node:worker-1"/,
        ],
        [
          "another cluster's CA",
          { token: formatJoinToken({ caHash: otherCa, id, secret }) },
          Code.Unauthenticated,
          /^token: pins ca hash [0-9a-f]{64}; this cluster's ca is/,
        ],
        [
          "unknown id",
          { token: formatJoinToken({ caHash: caHash(ca.certPem), id: "zzzzzz", secret }) },
          Code.Unauthenticated,
          /^token: join token "zzzzzz" is unknown or its secret does not match$/,
        ],
        [
          "wrong secret",
          { token: formatJoinToken({ caHash: caHash(ca.certPem), id, secret: "f".repeat(32) }) },
          Code.Unauthenticated,
          /is unknown or its secret does not match$/,
        ],
        ["expired", { token: expired }, Code.Unauthenticated, /^token: join token "[a-z0-9]{6}" expired at /],
        ["revoked", { token: revoked }, Code.Unauthenticated, /^token: join token "[a-z0-9]{6}" is revoked$/],
        ["used up", { token: usedUp }, Code.Unauthenticated, /^token: join token "[a-z0-9]{6}" is used up \(1 of 1 joins\)$/],
        [
          "scoped to another node",
          { token: scoped },
          Code.PermissionDenied,
          /^node: join token "[a-z0-9]{6}" joins only node "worker-9", not "worker-1"$/,
        ],
      ];
      for (const [what, change, code, message] of cases) {
        await refused(api.join({ ...good, ...change }), code, message).catch((e: unknown) => assert.fail(`${what}: ${String(e)}`));
      }
      assert.equal(await store.revision(), rev, "no refusal wrote anything");
      assert.equal(await store.get(keys.nodeBinding("worker-1")), undefined);
      // And the good request still works: nothing above spent the token.
      await api.join(good);
    });

    it("counts uses in a transaction: racing joins never exceed max_uses", async () => {
      const token = await newToken({ maxUses: 2 });
      const names = Array.from({ length: 6 }, (_, i) => `racer-${i}`);
      const csrs = await Promise.all(names.map(csrFor));
      const results = await Promise.allSettled(names.map((node, i) => api.join({ token, node, csrPem: csrs[i]!, nodeSecret: SECRET_A })));
      const ok = results.filter((r) => r.status === "fulfilled");
      assert.equal(ok.length, 2);
      for (const r of results) {
        if (r.status === "rejected") {
          assert.ok(r.reason instanceof ConnectError);
          assert.equal(r.reason.code, Code.Unauthenticated);
          assert.match(r.reason.rawMessage, /is used up \(2 of 2 joins\)$/);
        }
      }
      const rec = fromBinary(JoinTokenRecordSchema, (await store.get(keys.joinToken(parseJoinToken(token).id)))!.value);
      assert.equal(rec.used, 2);
      assert.equal((await store.range(keys.nodeBindings)).kvs.length, 2, "only the winners are bound");
    });

    it("binds a new name once when two agents race for it", async () => {
      const token = await newToken();
      const [a, b] = await Promise.allSettled([
        api.join({ token, node: "worker-1", csrPem: await csrFor("worker-1"), nodeSecret: SECRET_A }),
        api.join({ token, node: "worker-1", csrPem: await csrFor("worker-1"), nodeSecret: SECRET_B }),
      ]);
      const outcomes = [a, b].map((r) =>
        r.status === "fulfilled" ? "ok" : r.reason instanceof ConnectError ? Code[r.reason.code] : String(r.reason),
      );
      assert.deepEqual(outcomes.sort(), ["AlreadyExists", "ok"]);
      const rec = fromBinary(JoinTokenRecordSchema, (await store.get(keys.joinToken(parseJoinToken(token).id)))!.value);
      assert.equal(rec.used, 1, "the loser's use is not counted");
    });

    it("revokes a token: idempotent, NotFound for an unknown id, InvalidArgument for a malformed one", async () => {
      const token = await newToken();
      const { id } = parseJoinToken(token);
      const first = await api.revokeJoinToken({ id });
      assert.equal(first.joinToken?.revoked, true);
      const rev = await store.revision();
      assert.equal((await api.revokeJoinToken({ id })).joinToken?.revoked, true);
      assert.equal(await store.revision(), rev, "a second revoke writes nothing");
      await refused(
        api.join({ token, node: "worker-1", csrPem: await csrFor("worker-1"), nodeSecret: SECRET_A }),
        Code.Unauthenticated,
        /is revoked$/,
      );
      await refused(api.revokeJoinToken({ id: "zzzzzz" }), Code.NotFound, /^join token "zzzzzz" not found$/);
      await refused(api.revokeJoinToken({ id: "../x" }), Code.InvalidArgument, /^id: "\.\.\/x" is not a join token id/);
      assert.deepEqual(
        (await api.listJoinTokens({})).joinTokens.map((j) => [j.id, j.revoked]),
        [[id, true]],
      );
    });

    it("refuses bad token requests, naming the field, and writes nothing", async () => {
      const rev = await store.revision();
      const cases: [Parameters<typeof api.createJoinToken>[0], RegExp][] = [
        [{ node: "Bad Name" }, /^node: "Bad Name" is not a valid name/],
        [{ ttlSeconds: 365 * 24 * 3600 + 1 }, /^ttl_seconds: 31536001 is more than the maximum 31536000 \(one year\)$/],
        [{ maxUses: 1_000_001 }, /^max_uses: 1000001 is more than the maximum 1000000$/],
        [{ description: "x".repeat(257) }, /^description: is 257 bytes; at most 256 allowed$/],
        [{ description: "a\u0000b" }, /^description: .* contains control characters$/],
      ];
      for (const [req, message] of cases) await refused(api.createJoinToken(req), Code.InvalidArgument, message);
      assert.equal(await store.revision(), rev);
    });
  });
