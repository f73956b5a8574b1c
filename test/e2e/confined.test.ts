// A cluster on etcd with TLS, client-certificate auth and roles, as production runs it: etcd's
// certificates come from the cluster CA the server made; the server is etcd user
// hypervisor-server and turns auth on; an agent joins with a token, and its node certificate is
// its etcd identity, user node:<name>, whose role reaches only its own keys. The agent runs an
// instance and deletes it through that role alone, and etcd itself refuses the same identity
// everything outside it.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openEtcdStore, type EtcdStore } from "../../pkg/cluster/etcd/index.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { PermissionDeniedError } from "../../pkg/cluster/store/index.js";
import { loadOrCreateCa } from "../../pkg/pki/index.js";
import { ctlFor } from "../support/cluster.js";
import { startEtcd, type EtcdProcess } from "../support/etcd.js";
import { testCaIn } from "../support/pki.js";
import { binPath, freePort, Proc, until } from "../support/procs.js";

describe("a cluster under etcd TLS, client-certificate auth and node roles", { timeout: 300_000 }, () => {
  let dir: string;
  let etcd: EtcdProcess;
  let port: number;
  const procs: Proc[] = [];
  const pki = () => join(dir, "server", "pki");
  // As the bootstrap admin (the token the server's first start wrote beside the CA).
  const ctl = (...args: string[]) => ctlFor(`https://127.0.0.1:${port}`, join(pki(), "ca.crt"), 60_000)(...args);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-confined-"));
    // The cluster CA first (as `hypervisor-server` makes it at its first start): etcd trusts it.
    await loadOrCreateCa(pki());
    await mkdir(join(dir, "etcd-pki"), { mode: 0o700 });
    const ca = testCaIn(pki(), join(dir, "etcd-pki"));
    etcd = await startEtcd({ tls: ca });
    const serverCert = await ca.issue("hypervisor-server");
    port = await freePort();
    const server = new Proc("server", [
      binPath("hypervisor-server"),
      ...["--store", "etcd", "--etcd-endpoints", etcd.endpoint, "--etcd-ca-file", ca.caFile],
      ...["--etcd-cert-file", serverCert.certFile, "--etcd-key-file", serverCert.keyFile, "--etcd-enable-auth"],
      ...["--listen", `127.0.0.1:${port}`, "--data-dir", join(dir, "server"), "--ha-grace-period", "600"],
    ]);
    procs.push(server);
    await server.waitFor(/etcd auth on/);
    await server.waitFor(/server listening/);
  });

  after(async () => {
    for (const p of procs.reverse()) await p.stop();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("a joined agent runs and deletes an instance with only its own keys, and etcd refuses it the rest", async () => {
    const token = (await ctl("join-token", "create", "--node", "c1")).trim();
    const agent = new Proc("agent c1", [
      binPath("hypervisor-agent"),
      ...["--node-name", "c1", "--etcd-endpoints", etcd.endpoint, "--drivers", "mock", "--data-dir", join(dir, "c1")],
      ...["--heartbeat-ttl", "5", "--server", `https://127.0.0.1:${port}`, "--join-token", token],
    ]);
    procs.push(agent);
    await agent.waitFor(/agent started/);
    await until("c1 Ready", async () => /c1\s+Ready/.test(await ctl("node", "list")));

    await ctl("instance", "create", "web", "--driver", "mock", "--vcpus", "1", "--memory", "64", "--wait", "--timeout", "1m");
    assert.match(await ctl("instance", "get", "web"), /Running/);
    await ctl("instance", "delete", "web", "--wait", "--timeout", "1m");
    await assert.rejects(ctl("instance", "get", "web"), /not found/);
    assert.ok(!agent.output.some((l) => /permission denied|PermissionDenied/i.test(l)), agent.tail());

    // The agent's own etcd identity, from its own files: its prefix yes, anything else no.
    const nodeDir = join(dir, "c1", "pki");
    let asNode: EtcdStore | undefined;
    try {
      asNode = await openEtcdStore({
        endpoints: [etcd.endpoint],
        tls: { caFile: join(nodeDir, "ca.crt"), certFile: join(nodeDir, "node.crt"), keyFile: join(nodeDir, "node.key") },
      });
      await asNode.put(`${keys.nodePrefix("c1")}probe`, new Uint8Array([1]));
      for (const key of [
        keys.status("c2", "default/x"),
        keys.alive("c2"),
        keys.endpoint("c2"),
        keys.instance("default/x"),
        keys.assignment("c1", "default/x"),
        keys.nodeFlags("c1"),
      ])
        await assert.rejects(asNode.put(key, new Uint8Array([1])), PermissionDeniedError, key);
      await assert.rejects(asNode.range(keys.instances), PermissionDeniedError);
      await assert.rejects(asNode.range(keys.assignmentsOf("c2")), PermissionDeniedError);
    } finally {
      await asNode?.close();
    }

    // Revoked: etcd refuses the node at once.
    assert.match(await ctl("node", "revoke", "c1"), /revoked/);
    const again = await openEtcdStore({
      endpoints: [etcd.endpoint],
      tls: { caFile: join(nodeDir, "ca.crt"), certFile: join(nodeDir, "node.crt"), keyFile: join(nodeDir, "node.key") },
    });
    try {
      await assert.rejects(again.put(`${keys.nodePrefix("c1")}probe`, new Uint8Array([2])), PermissionDeniedError);
    } finally {
      await again.close();
    }
  });
});
