// Node certificates of ten seconds, renewed while the node works: the production shape (etcd on
// TLS with client-certificate auth, the node's certificate its etcd identity; the API on TLS;
// server and agent on mutual TLS) with `--node-cert-ttl 10`, one agent on the real libvirtd with a
// VM under TCG, and its etcd connections through a TCP proxy the test cuts once the first
// certificate has lapsed. Through several renewals: the serial console opened before the first
// one keeps answering, the liveness lease is never lost (the same lease, kept alive across the
// cut: the reconnect presents the renewed certificate), and new calls to the agent (logs, a new
// console) work with the renewed certificate.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { EtcdStore } from "../../pkg/cluster/etcd/index.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { adminToken, ctlFor, joinArgs, joinToken, startSecureEtcd, type SecureEtcd } from "../support/cluster.js";
import { GUEST_CMD_DONE, GUEST_READY_MARKER, guestVmYaml, testGuest } from "../support/guest.js";
import { ensureLibvirtd } from "../support/libvirt.js";
import { binPath, freePort, Proc, until } from "../support/procs.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";

const run = promisify(execFile);
const NODE = `renew-${process.pid}`;
const TTL = 10; // the shortest node-cert-ttl the server takes: renewed every ~6.7 s

describe("node certificates renewed every few seconds, heartbeats and consoles uninterrupted", { timeout: 600_000 }, () => {
  const vm = `renew-vm-${process.pid}`;
  let dir: string;
  let etcd: SecureEtcd;
  let proxy: TcpProxy;
  let store: EtcdStore;
  let port: number;
  let server: Proc;
  let agent: Proc;
  const url = () => `https://127.0.0.1:${port}`;
  const ctl = (...args: string[]) => ctlFor(url(), etcd.caFile)(...args);
  const renewals = () => agent.output.filter((l) => /node certificate renewed/.test(l)).length;

  /** `hypervisor-ctl instance console` as a child: what it prints, and a way to type. */
  const openConsole = async () => {
    const child: ChildProcessWithoutNullStreams = spawn(
      process.execPath,
      [binPath("hypervisor-ctl"), ...ctlFor(url(), etcd.caFile).args, "instance", "console", vm],
      // As the bootstrap admin, like `ctl` (ctlFor's args are only where and what to trust).
      { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, HYPERVISOR_TOKEN: adminToken(etcd.caFile) } },
    );
    const io = { out: "", err: "", exit: undefined as number | null | undefined };
    child.stdout.on("data", (b: Buffer) => (io.out += b.toString()));
    child.stderr.on("data", (b: Buffer) => (io.err += b.toString()));
    child.once("exit", (code) => (io.exit = code));
    await until("console connected", () => io.err.includes("Connected to the serial console"), 60_000);
    /** Types `echo <word>-$((n*n))` until the answer shows (the guest may be busy under TCG). */
    const ask = async (word: string, n: number) => {
      const want = `${word}-${n * n}`;
      await until(
        `${want} on the console`,
        async () => {
          assert.equal(io.exit, undefined, `the console ended: ${io.err}`);
          child.stdin.write(`echo ${word}-$((${n}*${n}))\n`);
          await new Promise((r) => setTimeout(r, 1000));
          return io.out.includes(want) && io.out.includes(GUEST_CMD_DONE);
        },
        120_000,
        0,
      );
    };
    return { child, io, ask };
  };

  before(async () => {
    await ensureLibvirtd();
    const guest = await testGuest();
    dir = await mkdtemp(join(tmpdir(), "hv-renew-"));
    await chmod(dir, 0o755); // QEMU (libvirt-qemu) reaches the agent's state through it
    await mkdir(join(dir, "images"), { mode: 0o755 });
    await copyFile(guest.kernel, join(dir, "images", "vmlinuz"));
    await copyFile(guest.initrd, join(dir, "images", "initrd.img"));
    etcd = await startSecureEtcd(join(dir, "server", "pki"));
    store = await etcd.openAsServer();
    proxy = await startTcpProxy("127.0.0.1", Number(new URL(etcd.etcd.endpoint).port));
    port = await freePort();
    server = new Proc("server", [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      ...["--listen", `127.0.0.1:${port}`, "--data-dir", join(dir, "server"), "--node-cert-ttl", String(TTL)],
      // Consoles through the agent's tunnel (mutual TLS), not straight to the VM's socket.
      "--no-console-local-direct",
    ]);
    await server.waitFor(/server listening/);
    const token = await joinToken(ctl, 1);
    agent = new Proc("agent", [
      binPath("hypervisor-agent"),
      ...["--node-name", NODE, "--etcd-endpoints", `https://127.0.0.1:${proxy.port}`, "--heartbeat-ttl", "5"],
      ...["--drivers", "libvirt", "--data-dir", join(dir, "agent"), "--libvirt-image-dir", join(dir, "images")],
      ...["--libvirt-domain-type", "qemu"],
      ...joinArgs(url(), token),
    ]);
    await agent.waitFor(/agent started/);
    await writeFile(join(dir, "vm.yaml"), guestVmYaml(vm, guest.cmdline));
    await ctl("instance", "create", "-f", join(dir, "vm.yaml"), "--wait", "--timeout", "5m");
    await until("the guest booted", async () => (await ctl("instance", "logs", vm)).includes(GUEST_READY_MARKER), 300_000);
  });

  after(async () => {
    const deleted = await ctl("instance", "delete", vm, "--wait", "--timeout", "2m").then(
      () => true,
      () => false,
    );
    // A failed run may have left the node unable to delete it: the test's own domain goes anyway.
    if (!deleted)
      for (const args of [["destroy"], ["undefine", "--nvram"]])
        await run("virsh", ["-c", "qemu:///system", ...args, `hv-${vm}`]).catch(() => undefined);
    await agent?.stop();
    await server?.stop();
    await store?.close();
    await proxy?.close();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps the console, the lease and the agent channel through renewals and an etcd reconnect after the first certificate lapsed", async () => {
    const firstCert = new X509Certificate(await readFile(join(dir, "agent", "pki", "node.crt")));
    const alive = await store.get(keys.alive(NODE));
    assert.ok(alive && alive.lease !== "0", "the node's liveness key, on a lease");

    const console = await openConsole();
    await console.ask("before", 7);
    const renewedBefore = renewals();

    // Two renewals at least, and the first certificate past its end.
    await until(
      "two renewals and the first certificate lapsed",
      async () => {
        return renewals() >= renewedBefore + 2 && Date.now() > Date.parse(firstCert.validTo) + 1000;
      },
      120_000,
    );
    const now = new X509Certificate(await readFile(join(dir, "agent", "pki", "node.crt")));
    assert.notEqual(now.serialNumber, firstCert.serialNumber);

    // Every etcd connection of the agent dropped: it must shake hands again, and only the
    // renewed certificate is still valid.
    assert.ok(proxy.cut() >= 1, "the agent had an etcd connection through the proxy");
    const accepted = proxy.accepted;
    // More than two TTLs: a lapsed heartbeat would have lost the lease.
    await new Promise((r) => setTimeout(r, 12_000));
    assert.ok(proxy.accepted > accepted, "the agent reconnected to etcd");
    const still = await store.get(keys.alive(NODE));
    assert.equal(still?.lease, alive.lease, "the same liveness lease: heartbeats never lapsed");
    assert.match(await ctl("node", "list"), new RegExp(`${NODE}\\s+Ready`));

    // The console opened before the first renewal still answers, on the same stream.
    await console.ask("after", 9);
    assert.equal(console.io.exit, undefined);
    assert.equal(console.io.err.match(/Connected to the serial console/g)?.length, 1, "never reconnected");
    console.child.stdin.write(Buffer.from([0x1d]));
    await until("detached", () => console.io.exit !== undefined);

    // New calls to the agent: its endpoint serves the renewed certificate, the server accepts it.
    assert.match(await ctl("instance", "logs", vm), new RegExp(GUEST_READY_MARKER));
    const second = await openConsole();
    await second.ask("again", 11);
    second.child.stdin.write(Buffer.from([0x1d]));
    await until("detached", () => second.io.exit !== undefined);

    assert.ok(
      !agent.output.some((l) => /permission denied|certificate renewal failed|bad certificate|certificate expired/i.test(l)),
      agent.tail(40),
    );
  });
});
