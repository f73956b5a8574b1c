// No guest's disk is deleted unasked, on the real libvirtd, with a cluster as production runs it:
// etcd on TLS with client-certificate auth, hypervisor-server serving TLS, two hypervisor-agents
// (libvirt) joined with a token (each one's etcd identity its node certificate), and
// hypervisor-ctl; the test breaks the stored state as the server's etcd user. VMs boot the test
// guest's kernel and carry a qcow2 overlay of a small base image as their local disk. The test
// guest has no block driver, so "the data" is a pattern written into the overlay with qemu-io
// while the VM is stopped, read back (qemu-io -U, beside the running QEMU) after each step.
//
//   a second cluster (its own CA, etcd and server, an empty store, the same node name, the same
//   libvirtd) ─► sees nothing, touches nothing
//   the store forgets a VM ─► its agent keeps it running, reports an orphan ─► adopt: same domain, same disk
//   the store forgets another ─► purge: domain and overlay gone
//   the node is lost ─► the VM with a local disk stays (explain says why); one declared ephemeral moves
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { AllocationSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { type Store } from "../../pkg/cluster/store/index.js";
import { clusterId, keys, parseNodeKey } from "../../pkg/cluster/state/index.js";
import { ctlFor, joinArgs, joinToken, startSecureEtcd, type Ctl, type SecureEtcd } from "../support/cluster.js";
import { testGuest } from "../support/guest.js";
import { ensureLibvirtd } from "../support/libvirt.js";
import { binPath, freePort, Proc, until } from "../support/procs.js";

const run = promisify(execFile);
const virsh = async (...args: string[]) => (await run("virsh", ["-c", "qemu:///system", ...args])).stdout.trim();
const PATTERN = "0x5a";
const AT = "1M";
const LEN = "64k";

interface JsonInstance {
  name: string;
  uid: string;
  status?: { phase?: string; node?: string };
}
interface JsonOrphan {
  name: string;
  uid: string;
  state: string;
  reason?: string;
  localDisk?: boolean;
}

describe("data safety on the real libvirtd (etcd, server, two agents, ctl)", { timeout: 900_000 }, () => {
  let dir: string;
  let etcd: SecureEtcd;
  let store: Store;
  let port: number;
  let server: Proc;
  let ctl: Ctl;
  let token = "";
  const agents = new Map<string, Proc>();
  const pid = process.pid;
  const nodeA = `safe-a-${pid}`;
  const nodeB = `safe-b-${pid}`;
  const keep = `sf-keep-${pid}`;
  const purge = `sf-purge-${pid}`;
  const scratch = `sf-scratch-${pid}`;

  const get = async (name: string) => JSON.parse(await ctl("instance", "get", name, "-o", "json")) as JsonInstance;
  const orphans = async (node: string) => (JSON.parse(await ctl("node", "orphans", node, "-o", "json")) as { items: JsonOrphan[] }).items;
  const running = (name: string, node: string) => async () => {
    const i = await get(name).catch(() => undefined);
    return i?.status?.phase === "PHASE_RUNNING" && i.status.node === node ? i : undefined;
  };
  /** An agent of the cluster whose etcd is at `endpoint`, joined through the server at `server` (a restart keeps its certificate). */
  const startAgent = (node: string, endpoint: string, dataDir: string, server = `https://127.0.0.1:${port}`, joinWith = token) => {
    const p = new Proc(`agent ${node}`, [
      binPath("hypervisor-agent"),
      ...["--node-name", node, "--etcd-endpoints", endpoint, "--heartbeat-ttl", "2", "--drivers", "libvirt"],
      ...["--data-dir", dataDir, "--libvirt-image-dir", join(dir, "images"), "--libvirt-domain-type", "qemu", "--resync-seconds", "2"],
      ...joinArgs(server, joinWith),
    ]);
    return p;
  };
  const spec = async (name: string, ephemeral: boolean) => {
    const file = join(dir, `${name}.json`);
    const guest = await testGuest();
    await writeFile(
      file,
      JSON.stringify({
        name,
        spec: {
          driver: "libvirt",
          vcpus: 1,
          memoryMib: 192,
          kernel: "vmlinuz",
          initrd: "initrd.img",
          cmdline: guest.cmdline,
          image: "base.qcow2",
          ephemeralDisks: ephemeral,
        },
      }),
    );
    return file;
  };
  const create = async (name: string, node: string, ephemeral = false) => {
    await ctl("instance", "create", "-f", await spec(name, ephemeral), "--wait", "--timeout", "5m");
    return until(`${name} Running on ${node}`, running(name, node), 60_000);
  };
  const domid = (name: string) => virsh("domid", `hv-${name}`);
  const overlay = async (name: string) => {
    const out = await virsh("domblklist", `hv-${name}`, "--details");
    const line = out.split("\n").find((l) => /\bdisk\b/.test(l) && l.includes(".qcow2"));
    const path = line?.trim().split(/\s+/).pop();
    assert.ok(path, `hv-${name} has a qcow2 disk: ${out}`);
    return path;
  };
  const patternThere = async (file: string) => {
    const { stdout } = await run("qemu-io", ["-U", "-r", "-f", "qcow2", "-c", `read -P ${PATTERN} ${AT} ${LEN}`, file]);
    return !/Pattern verification failed/.test(stdout) && /read 65536\/65536 bytes/.test(stdout);
  };
  const sha = async (file: string) =>
    createHash("sha256")
      .update(await readFile(file))
      .digest("hex");
  /** What a store restored from an older backup looks like for one instance: it never existed. */
  const forget = async (name: string, node: string) => {
    const { uid } = await get(name);
    for (const k of [keys.instance(`default/${name}`), keys.assignment(node, `default/${name}`), keys.status(node, `default/${name}`)])
      await store.delete(k);
    const kv = await store.get(keys.allocation(node));
    if (!kv) return;
    const alloc = fromBinary(AllocationSchema, kv.value);
    delete alloc.instances[uid];
    await store.put(keys.allocation(node), toBinary(AllocationSchema, alloc));
  };

  before(async () => {
    await ensureLibvirtd();
    const guest = await testGuest();
    dir = await mkdtemp(join(tmpdir(), "hv-e2e-safety-"));
    await chmod(dir, 0o755); // QEMU (libvirt-qemu) reaches the agent's state through it
    await mkdir(join(dir, "images"), { mode: 0o755 });
    await copyFile(guest.kernel, join(dir, "images", "vmlinuz"));
    await copyFile(guest.initrd, join(dir, "images", "initrd.img"));
    await run("qemu-img", ["create", "-q", "-f", "qcow2", join(dir, "images", "base.qcow2"), "16M"]);
    await chmod(join(dir, "images", "base.qcow2"), 0o644);
    etcd = await startSecureEtcd(join(dir, "server", "pki"));
    store = await etcd.openAsServer();
    port = await freePort();
    ctl = ctlFor(`https://127.0.0.1:${port}`, etcd.caFile);
    server = new Proc("server", [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      ...["--listen", `127.0.0.1:${port}`, "--data-dir", join(dir, "server"), "--ha-grace-period", "3"],
    ]);
    await server.waitFor(/server listening/);
    token = await joinToken(ctl, 2); // node A (it keeps its certificate when restarted) and node B
    const a = startAgent(nodeA, etcd.etcd.endpoint, join(dir, "agent-a"));
    agents.set(nodeA, a);
    await a.waitFor(/agent started/);
  });

  after(async () => {
    // Agents first: a running one would restart a VM destroyed under it (its restart policy).
    for (const a of agents.values()) await a.stop();
    await server?.stop();
    for (const n of [keep, purge, scratch]) {
      await virsh("destroy", `hv-${n}`).catch(() => undefined);
      await virsh("undefine", `hv-${n}`).catch(() => undefined);
    }
    await store?.close();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("a second cluster with the same node name on the same libvirtd (an empty store) leaves the first's VM running with its disk", async () => {
    await create(keep, nodeA);
    const id = await domid(keep);
    const disk = await overlay(keep);
    const before = await sha(disk);

    // The other cluster: its own CA, etcd and first server; its agent joins it with a token.
    const etcd2 = await startSecureEtcd(join(dir, "other-cluster", "server", "pki"));
    const store2 = await etcd2.openAsServer();
    const port2 = await freePort();
    const server2 = new Proc("other server", [
      binPath("hypervisor-server"),
      ...etcd2.serverArgs,
      ...["--listen", `127.0.0.1:${port2}`, "--data-dir", join(dir, "other-cluster", "server")],
    ]);
    let other: Proc | undefined;
    try {
      await server2.waitFor(/server listening/);
      const otherId = await clusterId(store2); // made by its first server
      const token2 = await joinToken(ctlFor(`https://127.0.0.1:${port2}`, etcd2.caFile), 1);
      other = startAgent(nodeA, etcd2.etcd.endpoint, join(dir, "other-cluster", "agent"), `https://127.0.0.1:${port2}`, token2);
      // Its adoption listed the node's domains: none of them is its cluster's.
      const line = await other.waitFor(/adoption done/);
      assert.match(line, /"adopted":0,"orphans":0/, "the other cluster sees no instance of its own");
      await other.waitFor(/agent started/);
      const orphans = (await store2.range(keys.nodes, { keysOnly: true })).kvs.filter((kv) => parseNodeKey(kv.key)?.kind === "orphan");
      assert.equal(orphans.length, 0, "nor reports ours as its orphans");
      assert.notEqual(otherId, await clusterId(store), "another cluster");
    } finally {
      await store2.close();
      await other?.stop();
      await server2.stop();
      await etcd2.stop();
    }
    assert.equal(await virsh("domstate", `hv-${keep}`), "running");
    assert.equal(await domid(keep), id, "not restarted");
    assert.equal(await sha(disk), before, "its overlay untouched");
    assert.equal((await get(keep)).status?.phase, "PHASE_RUNNING");
  });

  it("a VM the store forgets is kept running as an orphan, and adopted back with its disk as it was", async () => {
    // The data: a pattern in the overlay, written while the VM is stopped (QEMU holds the lock).
    await ctl("instance", "stop", keep, "--wait", "--timeout", "3m");
    const disk = await overlay(keep);
    await run("qemu-io", ["-f", "qcow2", "-c", `write -P ${PATTERN} ${AT} ${LEN}`, disk]);
    assert.ok(await patternThere(disk));
    await ctl("instance", "start", keep, "--wait", "--timeout", "3m");
    const { uid } = await get(keep);
    const id = await domid(keep);

    await forget(keep, nodeA);
    const o = await until("the orphan reported", async () => (await orphans(nodeA)).find((x) => x.name === keep), 30_000);
    assert.equal(o.uid, uid);
    assert.equal(o.reason, "ORPHAN_REASON_UNKNOWN");
    assert.equal(o.state, "running");
    assert.equal(o.localDisk, true);
    assert.match(await ctl("node", "orphans", nodeA), new RegExp(`${keep}\\s+libvirt\\s+running\\s+unknown\\s+local`));
    assert.equal(await virsh("domstate", `hv-${keep}`), "running", "left as it is");
    assert.equal(await domid(keep), id);

    assert.match(await ctl("node", "adopt", nodeA, keep), new RegExp(`instance/${keep} adopted on node ${nodeA}`));
    const back = await until(`${keep} Running again`, running(keep, nodeA), 60_000);
    assert.equal(back.uid, uid, "the same instance");
    assert.equal(await domid(keep), id, "the same domain, never restarted");
    assert.equal(await overlay(keep), disk);
    assert.ok(await patternThere(disk), "the data written before is still on its disk");
    await until("no orphan left", async () => !(await orphans(nodeA)).some((x) => x.name === keep), 30_000);
  });

  it("an orphan is deleted only when purged: domain and overlay gone", async () => {
    await create(purge, nodeA);
    const disk = await overlay(purge);
    await forget(purge, nodeA);
    await until("the orphan reported", async () => (await orphans(nodeA)).find((x) => x.name === purge), 30_000);
    assert.equal(await virsh("domstate", `hv-${purge}`), "running");
    assert.ok(await stat(disk));
    assert.match(await ctl("node", "purge", nodeA, purge), /purged/);
    await assert.rejects(virsh("dominfo", `hv-${purge}`), "the domain is gone");
    await assert.rejects(stat(disk), "its overlay is gone");
    assert.ok(!(await orphans(nodeA)).some((x) => x.name === purge));
  });

  it("a lost node's VM with a local disk stays there with the reason shown; one declared ephemeral moves", async () => {
    await create(scratch, nodeA, true);
    const b = startAgent(nodeB, etcd.etcd.endpoint, join(dir, "agent-b"));
    agents.set(nodeB, b);
    await b.waitFor(/agent started/);
    const keepId = await domid(keep);

    await agents.get(nodeA)!.kill9();
    // The node's machine is lost with its VMs as far as the cluster knows; one libvirtd hosts
    // both "nodes" here, so the ephemeral VM's domain is removed by hand to free its name for
    // node B (the VM with the local disk keeps running: nothing may touch it).
    await virsh("destroy", `hv-${scratch}`);
    await virsh("undefine", `hv-${scratch}`);
    await until(`${scratch} Running on ${nodeB}`, running(scratch, nodeB), 120_000);

    const why = JSON.parse(await ctl("instance", "explain", keep, "-o", "json")) as { summary: string };
    assert.match(why.summary, new RegExp(`placed on ${nodeA}, which is NotReady: not moved, its disk is local to node ${nodeA}`));
    assert.equal((await get(keep)).status?.node, nodeA, "still placed on its node");
    assert.equal(await virsh("domstate", `hv-${keep}`), "running");
    assert.equal(await domid(keep), keepId);

    // The node returns: its VM is adopted as it is.
    const a = startAgent(nodeA, etcd.etcd.endpoint, join(dir, "agent-a"));
    agents.set(nodeA, a);
    await a.waitFor(/agent started/);
    await until(`${keep} Running on ${nodeA}`, running(keep, nodeA), 60_000);
    assert.equal(await domid(keep), keepId, "never restarted");
    assert.ok(await patternThere(await overlay(keep)));
  });
});
