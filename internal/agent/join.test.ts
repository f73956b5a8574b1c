// Joining a cluster as the agent does it, against a real server over TLS (its CA made in a pki
// dir, the API served with a certificate of that CA): a valid token; expired, used-up and revoked
// ones; a server of another CA (refused before anything is sent to it); a "server" whose
// certificate names a node; and a second agent claiming a joined node's name.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient, type Client } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport } from "@connectrpc/connect-node";
import { IdentityService } from "../../api/gen/hypervisor/v1/identity_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { logger } from "../../pkg/log/index.js";
import { caHash, createCa, generateKeyAndCsr, identityOf, parseCa, parseJoinToken, signNodeCsr } from "../../pkg/pki/index.js";
import { Server } from "../server/server.js";
import { freePort, until } from "../../test/support/procs.js";
import { serverTls } from "../server/tls-setup.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { ensureCredentials, JoinRefusedError, loadCredentials } from "./join.js";
import { CertRenewer, lookupThroughServer } from "./renew.js";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { AgentSupportService } from "../../api/gen/hypervisor/v1/agent_pb.js";
import { InstanceSchema } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { codecs, keys as keysOf } from "../../pkg/cluster/state/index.js";

const log = logger("test");

describe("agent join", () => {
  let dir: string;
  let store: Store;
  let server: Server;
  let caPem: string;
  let api: Client<typeof IdentityService>;
  let n = 0;
  const nodeDir = () => join(dir, `agent-${++n}`);
  const token = async (o: { node?: string; ttlSeconds?: number; maxUses?: number } = {}) =>
    (await api.createJoinToken({ maxUses: 1, ...o })).token;
  const refused = (p: Promise<unknown>, message: RegExp) =>
    assert.rejects(p, (e: unknown) => {
      assert.ok(e instanceof JoinRefusedError, String(e));
      assert.match(e.message, message);
      return true;
    });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-join-"));
    store = await openEmbeddedStore(join(dir, "store"), { sync: false });
    const { ca, tls } = await serverTls({ pkiDir: join(dir, "pki"), name: "s1", listenHost: "127.0.0.1", names: [] });
    caPem = ca.certPem;
    server = new Server({ store, host: "127.0.0.1", port: 0, version: "test", access: "none", controllers: false, tls, identity: { ca } });
    await server.start();
    api = createClient(IdentityService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", nodeOptions: { ca: caPem } }));
  });

  after(async () => {
    await server.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("joins with a valid token: its own key, a certificate for node:<name> from the cluster CA, files 0600", async () => {
    const d = nodeDir();
    const creds = await ensureCredentials({ server: server.url, token: await token(), node: "worker-1", dir: d, log });
    assert.deepEqual(identityOf(creds.certPem), { kind: "node", name: "worker-1" });
    assert.ok(creds.cert.verify(new X509Certificate(caPem).publicKey), "signed by the cluster CA");
    assert.ok(creds.cert.checkPrivateKey((await import("node:crypto")).createPrivateKey(creds.keyPem)), "for the key made here");
    for (const f of ["node.key", "node.crt", "ca.crt", "node-secret"]) assert.equal((await stat(join(d, f))).mode & 0o777, 0o600, f);
    assert.equal(await readFile(join(d, "ca.crt"), "utf8"), caPem);
    // A restart needs no token: the certificate is there and still valid.
    const again = await ensureCredentials({ server: server.url, token: "", node: "worker-1", dir: d, log });
    assert.equal(again.certPem, creds.certPem);
    assert.equal(await loadCredentials(d, "other-name", new Date()), undefined, "not another node's");
  });

  it("refuses an expired, a used-up and a revoked token, and writes no certificate", async () => {
    const expired = await token({ ttlSeconds: 1 });
    await sleep(1500);
    const d1 = nodeDir();
    await refused(ensureCredentials({ server: server.url, token: expired, node: "late-1", dir: d1, log }), /Join at .*expired/);
    assert.equal(await loadCredentials(d1, "late-1", new Date()), undefined);

    const once = await token({ maxUses: 1 });
    await ensureCredentials({ server: server.url, token: once, node: "once-1", dir: nodeDir(), log });
    await refused(ensureCredentials({ server: server.url, token: once, node: "once-2", dir: nodeDir(), log }), /used up/);

    const revoked = await token();
    await api.revokeJoinToken({ id: parseJoinToken(revoked).id });
    const d3 = nodeDir();
    await refused(ensureCredentials({ server: server.url, token: revoked, node: "rev-1", dir: d3, log }), /revoked/);
    await assert.rejects(stat(join(d3, "node.crt")), /ENOENT/);
  });

  it("refuses a token scoped to another node name", async () => {
    const scoped = await token({ node: "db-1" });
    await refused(ensureCredentials({ server: server.url, token: scoped, node: "web-1", dir: nodeDir(), log }), /db-1/);
    const creds = await ensureCredentials({ server: server.url, token: scoped, node: "db-1", dir: nodeDir(), log });
    assert.deepEqual(identityOf(creds.certPem), { kind: "node", name: "db-1" });
  });

  it("a second agent cannot take a joined node's name: its node secret differs", async () => {
    const t = await token({ maxUses: 2 });
    await ensureCredentials({ server: server.url, token: t, node: "taken-1", dir: nodeDir(), log });
    await refused(ensureCredentials({ server: server.url, token: t, node: "taken-1", dir: nodeDir(), log }), /taken-1/);
  });

  it("refuses a server of another CA before sending it anything: no Join reaches it", async () => {
    // A fake server with a CA of its own: it answers GetCA and counts every Join it is sent.
    const other = await parseCa(...(await createCa().then((c) => [c.certPem, c.keyPem] as const)));
    const fake = await fakeServer(other);
    try {
      const t = await token();
      await refused(
        ensureCredentials({ server: fake.url, token: t, node: "lured-1", dir: nodeDir(), log }),
        /presents a CA \(sha256 [0-9a-f]{64}\) that is not the one the join token pins/,
      );
      assert.equal(fake.joins, 0, "the token's secret never reached it");
      assert.notEqual(caHash(other.certPem), parseJoinToken(t).caHash);
    } finally {
      fake.close();
    }
  });

  it("refuses a 'server' whose certificate names a node, even one of this cluster's CA", async () => {
    const ca = await parseCa(caPem, await readFile(join(dir, "pki", "ca.key"), "utf8"));
    const fake = await fakeServer(ca, { asNode: true });
    try {
      await refused(
        ensureCredentials({ server: fake.url, token: await token(), node: "lured-2", dir: nodeDir(), log }),
        /does not name a server/,
      );
      assert.equal(fake.joins, 0);
    } finally {
      fake.close();
    }
  });

  it("refuses a cleartext server URL", async () => {
    await refused(ensureCredentials({ server: "http://127.0.0.1:1", token: await token(), node: "plain-1", dir: nodeDir(), log }), /https/);
  });
});

describe("node certificate renewal and revocation", () => {
  let dir: string;
  let store: Store;
  let server: Server;
  let api: Client<typeof IdentityService>;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-renew-"));
    store = await openEmbeddedStore(join(dir, "store"), { sync: false });
    const { ca, tls } = await serverTls({ pkiDir: join(dir, "pki"), name: "s1", listenHost: "127.0.0.1", names: [] });
    // Certificates of 6 s: renewed at 4 s.
    server = new Server({
      store,
      host: "127.0.0.1",
      port: 0,
      version: "test",
      access: "none",
      controllers: false,
      tls,
      identity: { ca, nodeCertTtlSeconds: 6 },
    });
    await server.start();
    api = createClient(
      IdentityService,
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", nodeOptions: { ca: ca.certPem } }),
    );
  });

  after(async () => {
    await server.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("renews at two thirds of a lifetime of seconds, each time a new key; an older certificate cannot renew; a revoked node cannot", async () => {
    const d = join(dir, "r1");
    const { token } = await api.createJoinToken({ maxUses: 1 });
    const first = await ensureCredentials({ server: server.url, token, node: "r1", dir: d, log });
    const renewer = new CertRenewer(first, { server: server.url, dir: d, node: "r1", log });
    const ac = new AbortController();
    const loop = renewer.run(ac.signal);
    const seen = new Set([first.cert.serialNumber]);
    await until("two renewals", () => renewer.renewals >= 2, 60_000);
    for (const c of [renewer.current]) seen.add(c.cert.serialNumber);
    ac.abort();
    await loop;
    const now = renewer.current;
    assert.notEqual(now.keyPem, first.keyPem, "a new key each time");
    assert.deepEqual(identityOf(now.certPem), { kind: "node", name: "r1" });
    assert.equal(await readFile(join(d, "node.crt"), "utf8"), now.certPem, "written where the agent reads it");
    assert.ok(Date.parse(now.cert.validTo) > Date.parse(first.cert.validTo));
    // A certificate two renewals old (still valid: made and renewed twice within its 6 s) is not
    // one of the node's last two; the one before the current still is.
    const { token: t3 } = await api.createJoinToken({ maxUses: 1 });
    const c1 = await ensureCredentials({ server: server.url, token: t3, node: "r3", dir: join(dir, "r3"), log });
    const r3 = new CertRenewer(c1, { server: server.url, dir: join(dir, "r3"), node: "r3", log });
    const c2 = await r3.renewOnce();
    await r3.renewOnce();
    await assert.rejects(
      new CertRenewer(c1, { server: server.url, dir: join(dir, "stale"), node: "r3", log }).renewOnce(),
      (e: unknown) => {
        const err = ConnectError.from(e);
        assert.equal(err.code, Code.PermissionDenied, err.message);
        assert.match(err.rawMessage, /is not one of node r3's last two/);
        return true;
      },
    );
    await new CertRenewer(c2, { server: server.url, dir: join(dir, "prev"), node: "r3", log }).renewOnce(); // the previous one may

    assert.deepEqual((await api.revokeNode({ node: "r1" })).revoked, true);
    assert.deepEqual((await api.revokeNode({ node: "r1" })).revoked, false, "idempotent");
    const after = new CertRenewer(now, { server: server.url, dir: d, node: "r1", log });
    await after.run(AbortSignal.timeout(30_000)); // renews at once (past two thirds soon), is refused, and ends
    assert.match(after.refused ?? "", /node r1 is revoked/);
    assert.equal(after.renewals, 0);
  });

  it("a node looks up an instance it runs unassigned through a server; nobody else may ask", async () => {
    const { token } = await api.createJoinToken({ maxUses: 1 });
    const creds = await ensureCredentials({ server: server.url, token, node: "l1", dir: join(dir, "l1"), log });
    const lookup = lookupThroughServer(server.url, () => creds);
    assert.equal(await lookup("nowhere", AbortSignal.timeout(10_000)), undefined);
    const moved = create(InstanceSchema, {
      name: "moved-1",
      uid: "uid-moved-1",
      spec: { driver: "mock", ephemeralDisks: true, secretEnv: { K: "v" } },
      status: { node: "elsewhere" },
      deleteTime: timestampNow(),
    });
    await store.put(keysOf.instance("default/moved-1"), codecs.instance.encode(moved));
    assert.deepEqual(await lookup("moved-1", AbortSignal.timeout(10_000)), {
      uid: "uid-moved-1",
      node: "elsewhere",
      deleting: true,
      ephemeralDisks: true,
    });
    const anonymous = createClient(
      AgentSupportService,
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", nodeOptions: { ca: creds.caPem } }),
    );
    await assert.rejects(anonymous.lookupInstance({ name: "moved-1" }), (e: unknown) => {
      assert.equal(ConnectError.from(e).code, Code.Unauthenticated);
      return true;
    });
  });

  it("joins, renews and looks up through the first server of its list that can be reached", async () => {
    // A port nothing listens on: a server that is down.
    const down = `https://127.0.0.1:${await freePort()}`;
    const { token } = await api.createJoinToken({ maxUses: 1 });
    const d = join(dir, "f1");
    const creds = await ensureCredentials({ server: [down, server.url], token, node: "f1", dir: d, log });
    assert.deepEqual(identityOf(creds.certPem), { kind: "node", name: "f1" });
    const renewer = new CertRenewer(creds, { server: [down, server.url], dir: d, node: "f1", log });
    const renewed = await renewer.renewOnce();
    assert.notEqual(renewed.cert.serialNumber, creds.cert.serialNumber);
    assert.equal(renewer.renewals, 1);
    assert.equal(await lookupThroughServer([down, server.url], () => renewed)("nowhere", AbortSignal.timeout(10_000)), undefined);
    // None reachable: the join says so, naming them, and writes nothing.
    const { token: t2 } = await api.createJoinToken({ maxUses: 1 });
    await assert.rejects(
      ensureCredentials({ server: [down, down.replace(/:\d+$/, ":1")], token: t2, node: "f2", dir: join(dir, "f2"), log }),
      (e: unknown) => e instanceof JoinRefusedError && /cannot reach any of the servers \(https:\/\/127\.0\.0\.1:\d+, /.test(e.message),
    );
    await assert.rejects(stat(join(dir, "f2", "node.crt")), /ENOENT/);
    // A refusal is not skipped over: a revoked node is not retried elsewhere.
    await api.revokeNode({ node: "f1" });
    await assert.rejects(new CertRenewer(renewed, { server: [server.url, down], dir: d, node: "f1", log }).renewOnce(), (e: unknown) => {
      assert.equal(ConnectError.from(e).code, Code.PermissionDenied);
      return true;
    });
  });

  it("refuses a renewal without a node certificate, and one asking for another node's name", async () => {
    await assert.rejects(api.renewCertificate({ csrPem: (await generateKeyAndCsr("node:r2")).csrPem }), (e: unknown) => {
      assert.equal(ConnectError.from(e).code, Code.Unauthenticated);
      return true;
    });
    const { token } = await api.createJoinToken({ maxUses: 1 });
    const creds = await ensureCredentials({ server: server.url, token, node: "r2", dir: join(dir, "r2"), log });
    const asR2 = createClient(
      IdentityService,
      createConnectTransport({
        baseUrl: server.url,
        httpVersion: "1.1",
        nodeOptions: { ca: creds.caPem, cert: creds.certPem, key: creds.keyPem, agent: false },
      }),
    );
    await assert.rejects(asR2.renewCertificate({ csrPem: (await generateKeyAndCsr("node:other")).csrPem }), (e: unknown) => {
      const err = ConnectError.from(e);
      assert.equal(err.code, Code.InvalidArgument, err.message);
      assert.match(err.rawMessage, /csr_pem/);
      return true;
    });
  });
});

/**
 * An IdentityService over HTTPS with the CA given. Its certificate is a server's of that CA, or
 * (asNode) a node's: what a compromised node could present.
 */
async function fakeServer(
  ca: Awaited<ReturnType<typeof parseCa>>,
  opts: { asNode?: boolean } = {},
): Promise<{ url: string; joins: number; close(): void }> {
  const state = { joins: 0 };
  let cert: { keyPem: string; certPem: string };
  if (opts.asNode) {
    const { keyPem, csrPem } = await generateKeyAndCsr("node:evil");
    cert = { keyPem, certPem: await signNodeCsr(ca, csrPem, { node: "evil", ttlSeconds: 600 }) };
  } else {
    const { issueServerCertificate } = await import("../../pkg/pki/index.js");
    cert = await issueServerCertificate(ca, { name: "fake", dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"], ttlSeconds: 600 });
  }
  const handler = connectNodeAdapter({
    routes: (r) =>
      r.service(IdentityService, {
        getCA: () => ({ caPem: ca.certPem }),
        join: () => {
          state.joins++;
          return {};
        },
        createJoinToken: () => ({}),
        listJoinTokens: () => ({}),
        revokeJoinToken: () => ({}),
      }),
  });
  const srv = https.createServer({ key: cert.keyPem, cert: cert.certPem }, handler);
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  return {
    url: `https://127.0.0.1:${(srv.address() as AddressInfo).port}`,
    get joins() {
      return state.joins;
    },
    close: () => srv.close(),
  };
}
