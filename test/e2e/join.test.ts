// Joining as an operator does it, with the binaries: a server on etcd serving TLS (its CA made at
// the first start), `hypervisor-ctl join-token create` over TLS, and `hypervisor-agent --server
// URL --join-token TOKEN` that gets its certificate and registers a Ready node; a restart needs
// no token; `node revoke` takes its binding and etcd user; a second agent claiming a joined name,
// and one with a used token, exit 2 and say why. Making join tokens is the admin's right: a
// caller without a token, or with a viewer's, is refused (loopback is no credential).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import * as http2 from "node:http2";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AccessService } from "../../api/gen/hypervisor/v1/access_pb.js";
import { IdentityService } from "../../api/gen/hypervisor/v1/identity_pb.js";
import { NodeSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import { openEtcdStore } from "../../pkg/cluster/etcd/index.js";
import { codecs, keys } from "../../pkg/cluster/state/index.js";
import { identityOf } from "../../pkg/pki/index.js";
import { asAdmin, ctlFor } from "../support/cluster.js";
import { startEtcd, type EtcdProcess } from "../support/etcd.js";
import { binPath, freePort, Proc, until } from "../support/procs.js";

const run = promisify(execFile);

describe("join through the binaries (etcd, TLS server, ctl, agents)", { timeout: 300_000 }, () => {
  let dir: string;
  let etcd: EtcdProcess;
  let port: number;
  let server: Proc;
  const procs: Proc[] = [];
  const url = () => `https://127.0.0.1:${port}`;
  const caFile = () => join(dir, "server", "pki", "ca.crt");
  // As the bootstrap admin (the token the first start wrote beside the CA).
  const ctl = (...args: string[]) => ctlFor(url, caFile(), 60_000)(...args);
  const agent = (node: string, dataDir: string, token: string) => {
    const p = new Proc(`agent ${node}`, [
      binPath("hypervisor-agent"),
      ...["--node-name", node, "--etcd-endpoints", etcd.endpoint, "--drivers", "mock", "--data-dir", dataDir],
      ...["--heartbeat-ttl", "3", "--server", url()],
      ...(token ? ["--join-token", token] : []),
    ]);
    procs.push(p);
    return p;
  };
  const exitOf = async (p: Proc) => {
    await until(`${p.name} exits`, async () => !p.running);
    return p.stop();
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-join-e2e-"));
    etcd = await startEtcd();
    port = await freePort();
    server = new Proc("server", [
      binPath("hypervisor-server"),
      ...["--store", "etcd", "--etcd-endpoints", etcd.endpoint, "--listen", `127.0.0.1:${port}`, "--data-dir", join(dir, "server")],
    ]);
    await server.waitFor(/server listening/);
  });

  after(async () => {
    for (const p of procs) await p.stop();
    await server?.stop();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("an agent joins with a token from ctl, and its node is Ready; a restart needs no token", async () => {
    const token = (await ctl("join-token", "create", "--node", "w1", "--ttl", "10m")).trim();
    assert.match(token, /^HV10[0-9a-f]{64}::[a-z0-9]{6}\.[0-9a-f]{32}$/);
    const a = agent("w1", join(dir, "w1"), token);
    await a.waitFor(/node certificate ready/);
    await a.waitFor(/agent started/);
    const crt = await readFile(join(dir, "w1", "pki", "node.crt"), "utf8");
    assert.deepEqual(identityOf(crt), { kind: "node", name: "w1" });
    assert.equal((await stat(join(dir, "w1", "pki", "node.key"))).mode & 0o777, 0o600);
    await until("w1 Ready", async () => /w1\s+Ready/.test(await ctl("node", "list")));
    const listed = await ctl("join-token", "list");
    assert.match(listed, /w1/);

    // The agent channel is mutual TLS: an https endpoint and no token in the store; the server
    // reaches it (ListImages answers), ...
    const store = await openEtcdStore({ endpoints: [etcd.endpoint] });
    try {
      const ep = codecs.endpoint.decode((await store.get(keys.endpoint("w1")))!.value);
      assert.match(ep.url, /^https:\/\//);
      assert.equal(ep.token, "", "no bearer token in the store");
      const listed = JSON.parse(await ctl("image", "list", "--node", "w1", "-o", "json")) as { unreachable?: Record<string, string> };
      assert.deepEqual(listed.unreachable ?? {}, {});
      // ... refuses an endpoint whose certificate names another node (a record pointing at w1's agent) ...
      await store.put(keys.node("ghost"), codecs.node.encode(create(NodeSchema, { name: "ghost" })));
      await store.put(keys.alive("ghost"), new Uint8Array([1]));
      await store.put(keys.endpoint("ghost"), codecs.endpoint.encode(ep));
      const ghost = await until("ghost listed", async () => {
        const r = JSON.parse(await ctl("image", "list", "--node", "ghost", "-o", "json")) as { unreachable?: Record<string, string> };
        return r.unreachable?.ghost ? r.unreachable.ghost : undefined;
      });
      assert.match(ghost, /presents node:w1, not node:ghost/);
      // ... and the agent refuses a client that is not a server, even one with this cluster's certificate (its own).
      const d = join(dir, "w1", "pki");
      const [ca, cert, key] = await Promise.all(["ca.crt", "node.crt", "node.key"].map((f) => readFile(join(d, f), "utf8")));
      const refused = await new Promise<string>((resolve) => {
        const session = http2.connect(ep.url, { ca, cert, key, checkServerIdentity: () => undefined });
        session.on("error", (e: Error) => resolve(e.message));
        session.on("close", () => resolve("closed"));
        const req = session.request({
          ":path": "/hypervisor.v1.AgentService/ListImages",
          ":method": "POST",
          "content-type": "application/grpc",
        });
        req.on("error", (e: Error) => resolve(e.message));
        req.on("response", () => resolve("answered"));
        req.end();
      });
      assert.notEqual(refused, "answered");
      await until("the agent says why", async () => a.output.some((l) => /refused a client that is not a server/.test(l)));
    } finally {
      await store.close();
    }

    // Its etcd identity: user node:w1 with the role of its own keys (granted at the join).
    const etcdctl = async (...args: string[]) =>
      (await run("etcdctl", ["--endpoints", etcd.endpoint, ...args], { env: { ...process.env, ETCDCTL_API: "3" } })).stdout;
    assert.match(await etcdctl("user", "get", "node:w1"), /Roles: node:w1/);
    assert.match(await etcdctl("role", "get", "node:w1"), /\/hypervisor\/v1\/nodes\/w1\//);

    await a.stop();
    const again = agent("w1", join(dir, "w1"), "");
    await again.waitFor(/agent started/);
    assert.equal(await readFile(join(dir, "w1", "pki", "node.crt"), "utf8"), crt, "the same certificate, no new join");

    // Revoked: its binding and its etcd user go at once (its certificate lapses within node-cert-ttl).
    assert.match(await ctl("node", "revoke", "w1"), /node\/w1 revoked/);
    await assert.rejects(etcdctl("user", "get", "node:w1"), /user name not found/);
    assert.match(await ctl("node", "revoke", "w1"), /has no binding/);
  });

  it("making a join token needs the admin's right: no token is unauthenticated, a viewer's is permission_denied", async () => {
    const ca = await readFile(caFile(), "utf8");
    const transport = (...interceptors: Interceptor[]) =>
      createConnectTransport({ baseUrl: url(), httpVersion: "1.1", nodeOptions: { ca }, interceptors });
    const refusal = (p: Promise<unknown>) =>
      p.then(
        () => assert.fail("a join token was made"),
        (e: unknown) => ConnectError.from(e),
      );

    const anonymous = await refusal(createClient(IdentityService, transport()).createJoinToken({ maxUses: 1 }));
    assert.equal(anonymous.code, Code.Unauthenticated, String(anonymous));

    const { token } = await createClient(AccessService, transport(asAdmin(caFile()))).createToken({
      user: "watcher",
      roles: ["viewer"],
      ttlSeconds: 600,
      description: "join e2e: a viewer",
    });
    assert.match(token, /^hvt_/);
    const viewer = await refusal(
      createClient(IdentityService, transport()).createJoinToken({ maxUses: 1 }, { headers: { authorization: `Bearer ${token}` } }),
    );
    assert.equal(viewer.code, Code.PermissionDenied, String(viewer));
    assert.match(viewer.rawMessage, /watcher may not jointokens:create \(roles: viewer\)/);
    // ctl says the same to the viewer, whose token is good for what a viewer may do.
    const asViewer = ctlFor(url, caFile(), 60_000, token);
    await assert.rejects(asViewer("join-token", "create"), /permission_denied.*jointokens:create/s);
    assert.match(await asViewer("node", "list"), /NAME\s+STATUS/);
  });

  it("a second agent claiming a joined name (another node secret) and a used token both exit 2, saying why", async () => {
    const token = (await ctl("join-token", "create", "--uses", "3")).trim();
    await agent("w2", join(dir, "w2"), token).waitFor(/node certificate ready/);
    const thief = agent("w2", join(dir, "thief"), token);
    assert.equal(await exitOf(thief), 2);
    assert.ok(
      thief.output.some((l) => /cannot join the cluster/.test(l) && /w2/.test(l)),
      thief.tail(),
    );
    await assert.rejects(stat(join(dir, "thief", "pki", "node.crt")), /ENOENT/);

    const once = (await ctl("join-token", "create")).trim(); // one use by default
    await agent("w3", join(dir, "w3"), once).waitFor(/node certificate ready/);
    const late = agent("w4", join(dir, "w4"), once);
    assert.equal(await exitOf(late), 2);
    assert.ok(
      late.output.some((l) => /used up/.test(l)),
      late.tail(),
    );
  });
});
