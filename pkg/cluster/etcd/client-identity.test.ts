// A store's client certificate replaced while it runs (a renewed node certificate), against a real
// etcd with TLS, --client-cert-auth and auth on: connections open keep the identity they shook
// hands with; once they are cut (through a TCP proxy), the store reconnects as the new one, and
// etcd's roles follow it. A key that is not the certificate's is refused before it is used.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { startEtcd, type EtcdProcess } from "../../../test/support/etcd.js";
import { startTcpProxy, type TcpProxy } from "../../../test/support/tcp-proxy.js";
import { PermissionDeniedError, StoreError } from "../store/index.js";
import { keys } from "../state/index.js";
import { enableAuth, grantNode } from "./auth.js";
import { openEtcdStore, type EtcdStore } from "./etcd-store.js";

const one = new Uint8Array([1]);

describe("etcd client certificate replaced while the store runs", () => {
  let etcd: EtcdProcess;
  let proxy: TcpProxy;
  let admin: EtcdStore;
  let store: EtcdStore;
  const creds = async (cn: string) => {
    const c = await etcd.tls!.client(cn);
    return { ...c, cert: await readFile(c.certFile), key: await readFile(c.keyFile) };
  };

  before(async () => {
    etcd = await startEtcd({ tls: true });
    const server = await etcd.tls!.client("hypervisor-server");
    admin = await openEtcdStore({ endpoints: [etcd.endpoint], tls: server });
    await admin.put(keys.cluster, one);
    await enableAuth(admin);
    await grantNode(admin, "alpha");
    await grantNode(admin, "beta");
    proxy = await startTcpProxy("127.0.0.1", Number(new URL(etcd.endpoint).port));
    const alpha = await etcd.tls!.client("node:alpha");
    store = await openEtcdStore({ endpoints: [`https://127.0.0.1:${proxy.port}`], tls: alpha });
  });

  after(async () => {
    await store?.close();
    await admin?.close();
    await proxy?.close();
    await etcd?.stop();
  });

  it("reconnects as the new identity; the open connection keeps the old one until then", async () => {
    await store.put(`${keys.nodePrefix("alpha")}probe`, one);
    await assert.rejects(store.put(`${keys.nodePrefix("beta")}probe`, one), PermissionDeniedError);

    const beta = await creds("node:beta");
    store.setClientCertificate(beta.cert, beta.key);
    // The connection open now shook hands as node:alpha: etcd still sees alpha on it.
    await store.put(`${keys.nodePrefix("alpha")}probe`, new Uint8Array([2]));
    await assert.rejects(store.put(`${keys.nodePrefix("beta")}probe`, one), PermissionDeniedError);

    const acceptedBefore = proxy.accepted;
    assert.ok(proxy.cut() >= 1, "a connection to cut");
    // The next handshake presents node:beta (the first call may meet the cut connection).
    for (let i = 0; ; i++) {
      try {
        await store.put(`${keys.nodePrefix("beta")}probe`, one);
        break;
      } catch (e) {
        if (e instanceof PermissionDeniedError || i >= 50) throw e;
        await sleep(200);
      }
    }
    assert.ok(proxy.accepted > acceptedBefore, "it reconnected");
    await assert.rejects(store.put(`${keys.nodePrefix("alpha")}probe`, one), PermissionDeniedError);
    assert.deepEqual((await admin.get(`${keys.nodePrefix("beta")}probe`))?.value, one);
  });

  it("refuses a key that is not the certificate's, and keeps the identity it had", async () => {
    const alpha = await creds("node:alpha");
    const beta = await creds("node:beta");
    assert.throws(() => store.setClientCertificate(alpha.cert, beta.key), StoreError);
    proxy.cut();
    for (let i = 0; ; i++) {
      try {
        await store.put(`${keys.nodePrefix("beta")}probe`, new Uint8Array([3]));
        break;
      } catch (e) {
        if (e instanceof PermissionDeniedError || i >= 50) throw e;
        await sleep(200);
      }
    }
    assert.deepEqual((await admin.get(`${keys.nodePrefix("beta")}probe`))?.value, new Uint8Array([3]));
  });

  it("a store opened without a client certificate has none to replace", async () => {
    const plain = await openEtcdStore({ endpoints: [etcd.endpoint], tls: { caFile: etcd.tls!.ca.caFile } });
    try {
      const beta = await creds("node:beta");
      assert.throws(() => plain.setClientCertificate(beta.cert, beta.key), /without a client certificate/);
    } finally {
      await plain.close();
    }
  });
});
