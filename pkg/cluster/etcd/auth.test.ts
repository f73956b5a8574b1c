// etcd's own access control, against a real etcd with TLS, --client-cert-auth and auth on: with
// node a's certificate, etcd itself refuses everything outside a's prefixes; the server identity
// can do everything; clients without a (valid) certificate and revoked nodes get nothing.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { makeTestCa, type TestCa } from "../../../test/support/pki.js";
import { startEtcd, type EtcdProcess } from "../../../test/support/etcd.js";
import { LeaseNotFoundError, PermissionDeniedError, StoreUnavailableError, type Store } from "../store/index.js";
import { keys } from "../state/index.js";
import { enableAuth, ETCD_SERVER_USER, etcdNodeUser, grantNode, nodePermissions, revokeNode } from "./auth.js";
import { InvalidNodeNameError } from "./errors.js";
import { openEtcdStore, type EtcdStore } from "./etcd-store.js";
import { etcdOptions } from "./settings.js";

const V = "/hypervisor/v1/";
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

/** Rejects with PermissionDeniedError whose message names `what` (the key or prefix refused). */
async function refused(p: Promise<unknown>, what: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof PermissionDeniedError, `expected PermissionDeniedError for ${what}, got ${String(e)}`);
    assert.ok(e.message.includes(what), `${e.message} should name ${what}`);
    return true;
  });
}

/** The first batch of a watch, or its error. */
async function firstBatch(store: Store, prefix: string, fromRevision?: number) {
  const ac = new AbortController();
  try {
    for await (const batch of store.watch(prefix, { signal: ac.signal, ...(fromRevision !== undefined && { fromRevision }) })) return batch;
    return undefined;
  } finally {
    ac.abort();
  }
}

describe("etcd auth: node roles over TLS with client certificates", () => {
  let etcd: EtcdProcess;
  let server: EtcdStore;
  let nodeA: EtcdStore;
  const opened: Store[] = [];
  /** A store whose client certificate has CN `cn`, opened through the settings a binary uses. */
  const as = async (cn: string): Promise<EtcdStore> => {
    const c = await etcd.tls!.client(cn);
    const store = await openEtcdStore(
      etcdOptions({
        etcdEndpoints: [etcd.endpoint],
        etcdCaFile: c.caFile,
        etcdCertFile: c.certFile,
        etcdKeyFile: c.keyFile,
        etcdUsername: "",
        etcdPassword: "",
        etcdPasswordFile: "",
      }),
    );
    opened.push(store);
    return store;
  };

  /** What the server wrote before the tests: every test checks it is still there, unchanged. */
  const seeded = new Map<string, string>([
    [keys.cluster, "cluster-identity"],
    [`${V}instances/x`, "instance"],
    [`${V}assignments/a/x`, "assignment-a"],
    [`${V}assignments/b/x`, "assignment-b"],
    [`${V}allocations/a`, "allocation-a"],
    [`${V}nodeflags/a`, "flags-a"],
    [`${V}jointokens/t1`, "token"],
    [`${V}nodes/b/record`, "record-b"],
    [`${V}nodes/b/alive`, "alive-b"],
    [`${V}nodes/b/endpoint`, "endpoint-b"],
    [`${V}nodes/b/status/x`, "status-b"],
    [`${V}nodes/a2/alive`, "alive-a2"],
  ]);

  before(async () => {
    etcd = await startEtcd({ tls: true });
    server = await as(ETCD_SERVER_USER);
    await enableAuth(server);
    for (const n of ["a", "b", "a2"]) await grantNode(server, n);
    for (const [k, v] of seeded) await server.put(k, enc(v));
    nodeA = await as(etcdNodeUser("a"));
  });

  after(async () => {
    for (const s of opened) await s.close();
    await etcd?.stop();
  });

  async function assertSeedUnchanged(): Promise<void> {
    for (const [k, v] of seeded) assert.equal(dec((await server.get(k))?.value ?? enc("(missing)")), v, k);
  }

  it("gives a node exactly its own prefixes, each ending in '/', its assignments and the cluster key", () => {
    assert.deepEqual(nodePermissions("a"), [
      { access: "readwrite", key: `${V}nodes/a/`, prefix: true },
      { access: "read", key: `${V}assignments/a/`, prefix: true },
      { access: "read", key: `${V}cluster`, prefix: false },
    ]);
  });

  it("refuses every write of node a outside nodes/a/: puts, deletes, transactions, puts under a lease", async () => {
    const outside = [
      `${V}nodes/b/status/x`,
      `${V}nodes/b/alive`,
      `${V}nodes/b/endpoint`,
      `${V}nodes/b/record`,
      `${V}nodes/a2/alive`, // the prefix's trailing '/': nodes/a does not cover nodes/a2
      `${V}assignments/a/x`, // read-only for a
      `${V}assignments/b/x`,
      `${V}instances/x`,
      `${V}instances/new`,
      `${V}nodeflags/a`,
      `${V}allocations/a`,
      `${V}cluster`,
      `${V}jointokens/t1`,
      `${V}nodes/a`, // the bare name is not under the prefix either
    ];
    const lease = await nodeA.grantLease(10);
    try {
      for (const key of outside) {
        await refused(nodeA.put(key, enc("forged")), key);
        await refused(nodeA.put(key, enc("forged"), { lease }), key);
        await refused(nodeA.delete(key), key);
        await refused(nodeA.txn([], [{ type: "put", key, value: enc("forged") }]), key);
        // A transaction is refused whole, even when its other operations are a's own.
        await refused(
          nodeA.txn(
            [],
            [
              { type: "put", key: `${V}nodes/a/status/y`, value: enc("own") },
              { type: "delete", key },
            ],
          ),
          key,
        );
      }
      await refused(nodeA.deletePrefix(`${V}nodes/`), `${V}nodes/`);
      await refused(nodeA.deletePrefix(`${V}nodes/a`), `${V}nodes/a`);
    } finally {
      await nodeA.revokeLease(lease);
    }
    await assertSeedUnchanged();
    assert.equal(await server.get(`${V}instances/new`), undefined);
    assert.equal(await server.get(`${V}nodes/a/status/y`), undefined, "the refused transaction wrote nothing");
  });

  it("refuses node a's reads and watches of what is not its own", async () => {
    for (const prefix of [
      `${V}assignments/b/`,
      `${V}assignments/`,
      `${V}instances/`,
      `${V}jointokens/`,
      `${V}nodes/b/`,
      `${V}nodes/`,
      "",
    ]) {
      await refused(nodeA.range(prefix), prefix);
      await refused(firstBatch(nodeA, prefix), prefix);
    }
    for (const key of [`${V}nodes/b/record`, `${V}instances/x`, `${V}nodeflags/a`, `${V}allocations/a`, `${V}jointokens/t1`])
      await refused(nodeA.get(key), key);
  });

  it("lets node a write under nodes/a/, keep its liveness under its lease, watch its assignments and read the cluster key", async () => {
    for (const key of [`${V}nodes/a/record`, `${V}nodes/a/endpoint`, `${V}nodes/a/status/web`, `${V}nodes/a/orphans/old`]) {
      await nodeA.put(key, enc(`from a: ${key}`));
      assert.equal(dec((await server.get(key))!.value), `from a: ${key}`);
      assert.equal(dec((await nodeA.get(key))!.value), `from a: ${key}`);
    }
    const txn = await nodeA.txn(
      [{ key: `${V}nodes/a/status/web`, target: "version", result: "=", value: 1 }],
      [{ type: "put", key: `${V}nodes/a/status/web`, value: enc("v2") }],
    );
    assert.equal(txn.succeeded, true);
    assert.equal((await nodeA.range(`${V}nodes/a/`)).kvs.length, 4);
    assert.equal(await nodeA.delete(`${V}nodes/a/orphans/old`), 1);

    const lease = await nodeA.grantLease(10);
    await nodeA.put(`${V}nodes/a/alive`, enc("alive"), { lease });
    assert.ok((await nodeA.keepAliveOnce(lease)) > 0);
    assert.equal((await server.get(`${V}nodes/a/alive`))?.lease, lease);

    assert.equal(dec((await nodeA.get(keys.cluster))!.value), "cluster-identity");
    assert.equal((await nodeA.range(`${V}assignments/a/`)).kvs.length, 1);
    const from = await nodeA.revision();
    await nodeA.ping();
    const written = await server.put(`${V}assignments/a/web`, enc("run web"));
    const batch = await firstBatch(nodeA, `${V}assignments/a/`, from);
    assert.equal(batch?.revision, written);
    assert.deepEqual(
      batch?.events.map((e) => [e.type, e.kv.key, dec(e.kv.value)]),
      [["put", `${V}assignments/a/web`, "run web"]],
    );
  });

  it("lets the server identity do everything, and run enableAuth and grantNode again without change", async () => {
    await enableAuth(server);
    await grantNode(server, "a");
    const rev = await server.put(`${V}instances/by-server`, enc("i"));
    const seen = await firstBatch(server, "", rev);
    assert.equal(seen?.events[0]?.kv.key, `${V}instances/by-server`);
    assert.ok((await server.range("")).kvs.length >= seeded.size);
    assert.equal(await server.delete(`${V}instances/by-server`), 1);
    const lease = await server.grantLease(10);
    await server.put(`${V}nodes/b/alive`, enc("alive-b"), { lease });
    assert.ok((await server.keepAliveOnce(lease)) > 0);
    await server.revokeLease(lease);
    await server.put(`${V}nodes/b/alive`, enc("alive-b"));
    await assertSeedUnchanged();
    // Still exactly as before for a: its own prefix, nothing more.
    await nodeA.put(`${V}nodes/a/record`, enc("again"));
    await refused(nodeA.put(`${V}instances/x`, enc("forged")), `${V}instances/x`);
  });

  it("grantNode puts back exactly the node's permissions when its role or user was widened", async () => {
    // Widen node:a by hand: a write on instances/ and the root role.
    const role = etcdNodeUser("a");
    await server.authCall(undefined, "widen", async (auth) => {
      await auth.roleGrantPermission({
        name: role,
        perm: { permType: "Readwrite", key: Buffer.from(`${V}instances/`), range_end: Buffer.from(`${V}instances0`) },
      });
      await auth.roleGrantPermission({
        name: role,
        perm: { permType: "Readwrite", key: Buffer.from(keys.cluster), range_end: Buffer.alloc(0) },
      });
      await auth.userGrantRole({ user: role, role: "root" });
    });
    await nodeA.put(`${V}instances/widened`, enc("possible now"));
    await grantNode(server, "a");
    await refused(nodeA.put(`${V}instances/widened`, enc("again")), `${V}instances/widened`);
    await refused(nodeA.put(keys.cluster, enc("forged")), keys.cluster);
    await refused(nodeA.range(`${V}jointokens/`), `${V}jointokens/`);
    assert.equal(dec((await nodeA.get(keys.cluster))!.value), "cluster-identity", "read on the cluster key is kept");
    await nodeA.put(`${V}nodes/a/record`, enc("still mine"));
    await server.delete(`${V}instances/widened`);
  });

  it("refuses a node that manages etcd's auth: it cannot widen itself or revoke another", async () => {
    await refused(grantNode(nodeA, "a"), "role node:a");
    await refused(revokeNode(nodeA, "b"), "user node:b");
    await refused(enableAuth(nodeA), "role root");
    await refused(nodeA.put(`${V}instances/x`, enc("forged")), `${V}instances/x`);
  });

  it("refuses a client with no certificate, one from another CA, and one whose CN is no etcd user (a user's certificate)", async () => {
    const noCert = await openEtcdStore({ endpoints: [etcd.endpoint], tls: { caFile: etcd.tls!.ca.caFile }, dialTimeoutMs: 5000 });
    opened.push(noCert);
    await refused(noCert.get(keys.cluster), keys.cluster);
    await refused(firstBatch(noCert, `${V}assignments/a/`), `${V}assignments/a/`);

    let other: TestCa | undefined;
    try {
      other = await makeTestCa("another-ca");
      const forged = await other.issue(ETCD_SERVER_USER);
      const impostor = await openEtcdStore({
        endpoints: [etcd.endpoint],
        tls: { caFile: etcd.tls!.ca.caFile, ...forged },
        dialTimeoutMs: 5000,
      });
      opened.push(impostor);
      await refused(impostor.put(`${V}instances/x`, enc("forged")), `${V}instances/x`);
    } finally {
      await other?.remove();
    }

    const stranger = await as("node:never-joined");
    await refused(stranger.get(keys.cluster), keys.cluster);
    await refused(stranger.put(`${V}nodes/never-joined/alive`, enc("x")), `${V}nodes/never-joined/alive`);
    // A user's client certificate (CN=user:<name>, pkg/pki): no etcd user has such a name.
    const user = await as("user:robot");
    await refused(user.get(keys.cluster), keys.cluster);
    await refused(user.put(`${V}instances/x`, enc("user")), `${V}instances/x`);
    await assertSeedUnchanged();
  });

  it("does not let a client speaking plaintext to the TLS port in: unavailable, not a store", async () => {
    const plain = await openEtcdStore({ endpoints: [etcd.endpoint.replace("https://", "http://")], dialTimeoutMs: 2000 });
    opened.push(plain);
    await assert.rejects(plain.get(keys.cluster), StoreUnavailableError);
  });

  it("refuses a node user a password login: it has none", async () => {
    const c = await etcd.tls!.client("nobody");
    for (const password of ["", "guess"]) {
      const byPassword = await openEtcdStore({
        endpoints: [etcd.endpoint],
        tls: { caFile: c.caFile, certFile: c.certFile, keyFile: c.keyFile },
        username: etcdNodeUser("a"),
        password,
      });
      opened.push(byPassword);
      await refused(byPassword.get(keys.cluster), keys.cluster);
    }
  });

  it("shuts a revoked node out: its requests and new watches are refused, its lease and liveness are gone", async () => {
    await grantNode(server, "c");
    const nodeC = await as(etcdNodeUser("c"));
    const lease = await nodeC.grantLease(30);
    await nodeC.put(`${V}nodes/c/alive`, enc("alive"), { lease });
    await nodeC.put(`${V}nodes/c/record`, enc("record"));

    await revokeNode(server, "c");
    await revokeNode(server, "c"); // idempotent

    await refused(nodeC.put(`${V}nodes/c/record`, enc("after revoke")), `${V}nodes/c/record`);
    await refused(nodeC.get(keys.cluster), keys.cluster);
    await refused(nodeC.revision(), keys.cluster);
    await refused(firstBatch(nodeC, `${V}assignments/c/`), `${V}assignments/c/`);
    await assert.rejects(nodeC.keepAliveOnce(lease), LeaseNotFoundError);
    assert.equal(await server.get(`${V}nodes/c/alive`), undefined, "the liveness key went with its lease");
    assert.equal(dec((await server.get(`${V}nodes/c/record`))!.value), "record", "what the node wrote stays for the server to clean");

    // Granted again (a new join), it is back to its own prefix only.
    await grantNode(server, "c");
    await nodeC.put(`${V}nodes/c/record`, enc("rejoined"));
    await refused(nodeC.put(`${V}nodes/a/record`, enc("forged")), `${V}nodes/a/record`);
  });

  it("refuses a node name that is not a DNS label before it builds any user, role or key", async () => {
    const before = await server.authCall(undefined, "list roles", (auth) => auth.roleList());
    for (const bad of ["", "A", "a/b", "../a", "a b", "node:a", "-a", "a".repeat(64), "a\u0000"]) {
      const invalid = (e: unknown) => e instanceof InvalidNodeNameError && e.nodeName === bad && e.message.startsWith("node name: ");
      await assert.rejects(grantNode(server, bad), invalid);
      await assert.rejects(revokeNode(server, bad), invalid);
      assert.throws(() => etcdNodeUser(bad), invalid);
      assert.throws(() => nodePermissions(bad), invalid);
    }
    const afterRoles = await server.authCall(undefined, "list roles", (auth) => auth.roleList());
    assert.deepEqual(afterRoles.roles, before.roles);
  });
});

describe("etcd auth: enableAuth on a fresh etcd", () => {
  it("is idempotent, also after a start that stopped half-way", async () => {
    const etcd = await startEtcd({ tls: true });
    const c = await etcd.tls!.client(ETCD_SERVER_USER);
    const server = await openEtcdStore({ endpoints: [etcd.endpoint], tls: c });
    const c2 = await etcd.tls!.client("node:x");
    const other = await openEtcdStore({ endpoints: [etcd.endpoint], tls: c2 });
    try {
      // Before auth is on, anyone with a certificate may do anything.
      await other.put(`${V}instances/before`, enc("x"));
      // A first start that made the root role and stopped.
      await server.authCall(undefined, "add root role", (auth) => auth.roleAdd({ name: "root" }));
      await enableAuth(server);
      await enableAuth(server);
      await refused(other.put(`${V}instances/after`, enc("x")), `${V}instances/after`);
      await server.put(`${V}instances/after`, enc("x"));
      const users = await server.authCall(undefined, "list users", (auth) => auth.userList());
      assert.deepEqual([...users.users].sort(), [ETCD_SERVER_USER, "root"]);
      const roles = await server.authCall(undefined, "get user", (auth) => auth.userGet({ name: ETCD_SERVER_USER }));
      assert.deepEqual(roles.roles, ["root"]);
    } finally {
      await server.close();
      await other.close();
      await etcd.stop();
    }
  });
});
