// The libvirt driver against the real libvirtd and real QEMU guests (TCG where there is no KVM):
// the conformance suite every driver runs, then what only VMs have: the serial log, ACPI stop,
// disk overlays, the balloon, VNC, and hostile values in the domain XML. virsh is the independent
// witness of what libvirt really holds (the driver itself never runs it).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { GUEST_READY_MARKER, testGuest } from "../../../test/support/guest.js";
import { ensureLibvirtd, listeningTcpPorts, qemuPid } from "../../../test/support/libvirt.js";
import { until } from "../../../test/support/procs.js";
import { runDriverConformance } from "../driver/conformance.js";
import { type DriverInstanceSpec, InvalidSpecError } from "../driver/index.js";
import { LibvirtDriver } from "./driver.js";

const run = promisify(execFile);
const virsh = async (...args: string[]) => (await run("virsh", ["-c", "qemu:///system", ...args])).stdout.trim();
const domainExists = async (name: string) =>
  run("virsh", ["-c", "qemu:///system", "dominfo", `hv-${name}`]).then(
    () => true,
    () => false,
  );

let dir: string;
let imageDir: string;
let cmdline: string;
let socket: string;
const drivers: LibvirtDriver[] = [];

/** Domains of this test process; another agent or test on the same libvirtd never sees them. */
const OWNER = `lvt-${process.pid}`;

async function makeDriver(owner = OWNER): Promise<LibvirtDriver> {
  const d = new LibvirtDriver({
    stateDir: join(dir, owner === OWNER ? "state" : `state-${owner}`),
    imageDir,
    socketPath: socket,
    domainType: "qemu",
    owner,
  });
  drivers.push(d);
  return d;
}

function vmSpec(name: string, uid: string, extra: Partial<DriverInstanceSpec> = {}): DriverInstanceSpec {
  return {
    name,
    uid,
    labels: { suite: "libvirt" },
    image: "",
    vcpus: 1,
    memoryMiB: 128,
    diskGiB: 0,
    command: [],
    args: [],
    env: {},
    kernel: "vmlinuz",
    initrd: "initrd.img",
    cmdline,
    config: {},
    ...extra,
  };
}

/** The first bytes a VNC server sends: its protocol version. */
function rfbBanner(to: { path: string } | { port: number; host: string }): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const s = connect(to);
    s.once("data", (b) => {
      s.destroy();
      resolve(b.toString("latin1"));
    });
    s.once("error", reject);
  });
}

async function waitForMarker(d: LibvirtDriver, name: string, marker = GUEST_READY_MARKER): Promise<string> {
  return until(
    `${marker} in the serial log of ${name}`,
    async () => {
      const text = await readFile(d.logFile(name), "utf8").catch(() => "");
      return text.includes(marker) ? text : undefined;
    },
    180_000,
    250,
  );
}

before(async () => {
  socket = await ensureLibvirtd();
  const guest = await testGuest();
  dir = await mkdtemp(join(tmpdir(), "hv-libvirt-"));
  // QEMU runs as libvirt-qemu: it must be able to reach the state and image directories.
  await chmod(dir, 0o755);
  imageDir = join(dir, "images");
  await mkdir(imageDir, { mode: 0o755 });
  await copyFile(guest.kernel, join(imageDir, "vmlinuz"));
  await copyFile(guest.initrd, join(imageDir, "initrd.img"));
  await run("qemu-img", ["create", "-q", "-f", "qcow2", join(imageDir, "base.qcow2"), "64M"]);
  await chmod(join(imageDir, "base.qcow2"), 0o644);
  cmdline = guest.cmdline;
});

after(async () => {
  // Whatever a failed test left behind: only our own domains (hv-lvt-*, hv-conf-*).
  const d = await makeDriver();
  for (const i of await d.list().catch(() => []))
    if (i.name.startsWith("lvt-") || i.name.startsWith("conf-")) await d.destroy(i.name).catch(() => undefined);
  for (const x of drivers) await x.close();
  await rm(dir, { recursive: true, force: true });
});

runDriverConformance(
  "libvirt",
  makeDriver,
  (name, uid, hooks) => {
    if (hooks?.exit && hooks.exit.code !== 0) return undefined; // a VM's own poweroff is exit 0
    return vmSpec(name, uid, hooks?.exit ? { cmdline: `${cmdline} hv.poweroff_after=2` } : {});
  },
  { deadlineMs: 180_000, stopTimeoutMs: 60_000 },
);

describe("libvirt driver: what VMs have", () => {
  it("fingerprints the node as virsh sees it: versions, tcg, CPUs and memory", async () => {
    const fp = await (await makeDriver()).fingerprint();
    assert.equal(fp.healthy, true, fp.message);
    const a = fp.attributes;
    const version = await virsh("version");
    assert.ok(version.includes(`Using library: libvirt ${a.libvirt_version}`), `${a.libvirt_version} in ${version}`);
    assert.ok(version.includes(`Running hypervisor: QEMU ${a.qemu_version}`), `${a.qemu_version} in ${version}`);
    assert.equal(fp.version, a.libvirt_version);
    assert.deepEqual([a.domain_type, a.accel], ["qemu", "tcg"]);
    const nodeinfo = await virsh("nodeinfo");
    assert.match(nodeinfo, new RegExp(`CPU\\(s\\):\\s+${a.host_cpus}\\n`));
    const kib = Number(/Memory size:\s+(\d+) KiB/.exec(nodeinfo)?.[1]);
    assert.equal(a.host_memory_mib, String(Math.floor(kib / 1024)));
    assert.equal(a.hostname, await virsh("hostname"));
    // No libvirtd at the socket: unhealthy with the reason, not a throw.
    const gone = new LibvirtDriver({ stateDir: join(dir, "gone"), imageDir, socketPath: join(dir, "no-such.sock"), owner: OWNER });
    const down = await gone.fingerprint();
    assert.equal(down.healthy, false);
    assert.match(down.message, /no-such\.sock: .*ENOENT/);
    await gone.close();
  });

  it("boots the guest: its marker reaches the serial log, and the domain is what virsh sees", async () => {
    const d = await makeDriver();
    const name = `lvt-boot-${randomUUID().slice(0, 6)}`;
    await d.create(vmSpec(name, randomUUID()));
    const started = await d.start(name);
    assert.equal(started.state, "running");
    await waitForMarker(d, name);
    assert.equal(await virsh("domstate", `hv-${name}`), "running");
    await d.destroy(name);
  });

  it("stop is an ACPI shutdown the guest acts on, well before the timeout", async () => {
    const d = await makeDriver();
    const name = `lvt-acpi-${randomUUID().slice(0, 6)}`;
    await d.create(vmSpec(name, randomUUID()));
    await d.start(name);
    await waitForMarker(d, name);
    const stopped = await d.stop(name, 120_000);
    assert.equal(stopped.state, "stopped");
    assert.equal(await virsh("domstate", `hv-${name}`), "shut off");
    // The guest's init logs the power button before powering off: proof it was not a destroy.
    assert.match(await readFile(d.logFile(name), "utf8"), /HYPERVISOR-GUEST-POWEROFF/);
    await d.destroy(name);
  });

  it("an aborted stop ends its wait at once and leaves the guest running (no early destroy)", async () => {
    const d = await makeDriver();
    const name = `lvt-abort-${randomUUID().slice(0, 6)}`;
    await d.create(vmSpec(name, randomUUID()));
    await d.start(name);
    // Still booting: it drops the power button, so only the abort can end this stop early.
    const why = new Error("desired state changed");
    const ac = new AbortController();
    const stopping = d.stop(name, 3_000_000, { signal: ac.signal });
    setTimeout(() => ac.abort(why), 500);
    await assert.rejects(stopping, (e) => e === why);
    assert.equal(await virsh("domstate", `hv-${name}`), "running", "the caller decides what comes next");
    await d.destroy(name);
    assert.equal(await domainExists(name), false);
  });

  it("boots with a qcow2 overlay on a base image; delete leaves no domain, no overlay and no log", async () => {
    const d = await makeDriver();
    const name = `lvt-disk-${randomUUID().slice(0, 6)}`;
    const uid = randomUUID();
    await d.create(vmSpec(name, uid, { image: "base.qcow2" }));
    const overlay = join(dir, "state", "disks", `${name}-${uid}.qcow2`);
    const info = JSON.parse((await run("qemu-img", ["info", "--output=json", "-U", overlay])).stdout) as {
      "backing-filename"?: string;
      format?: string;
    };
    assert.equal(info.format, "qcow2");
    assert.equal(info["backing-filename"], join(imageDir, "base.qcow2"));
    await d.start(name);
    await waitForMarker(d, name);
    assert.match(await virsh("domblklist", `hv-${name}`), new RegExp(overlay.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
    await d.destroy(name);
    assert.equal(await domainExists(name), false, "no domain");
    await assert.rejects(stat(overlay), "no overlay");
    await assert.rejects(stat(d.logFile(name)), "no log");
    assert.equal((await stat(join(imageDir, "base.qcow2"))).isFile(), true, "the base image stays");
  });

  it("set-memory lowers the balloon target and the guest's stats show it", async () => {
    const d = await makeDriver();
    const name = `lvt-balloon-${randomUUID().slice(0, 6)}`;
    await d.create(vmSpec(name, randomUUID(), { memoryMiB: 256 }));
    await d.start(name);
    await waitForMarker(d, name);
    await d.setMemory(name, 160);
    const stats = await until(
      "actual_balloon at 160 MiB",
      async () => {
        const s = await d.memoryStats(name);
        return s.actual_balloon === 160n * 1024n ? s : undefined;
      },
      120_000,
      500,
    );
    assert.equal(stats.actual_balloon, 163_840n);
    const limits = await d.stats(name);
    assert.equal(limits.memoryLimitBytes, 160 * 1024 * 1024);
    await assert.rejects(
      d.setMemory(name, 512),
      (e: unknown) => e instanceof InvalidSpecError && /from 16 to the instance's 256 MiB/.test(e.message),
    );
    await d.destroy(name);
  });

  it("puts VNC on a unix socket that answers an RFB handshake; the QEMU process listens on no TCP port", async () => {
    const d = await makeDriver();
    const name = `lvt-vnc-${randomUUID().slice(0, 6)}`;
    await d.create(vmSpec(name, randomUUID()));
    const running = await d.start(name);
    const path = running.details.vnc_socket;
    assert.match(path ?? "", /^\/.+\/vnc\.sock$/, `vnc_socket ${path}`);
    assert.equal(running.details.vnc_port, undefined);
    assert.deepEqual(await d.console(name, "vnc"), { kind: "vnc", socket: path });
    assert.match(((await d.console(name, "serial")) as { path: string }).path, /^\/dev\/pts\/\d+$/);
    assert.equal(await rfbBanner({ path: path! }), "RFB 003.008\n");
    assert.deepEqual(await listeningTcpPorts(await qemuPid(`hv-${name}`)), [], "nothing of the VM listens on TCP");
    await d.destroy(name);
  });

  it("keeps the console of a VM an older agent started with VNC on a TCP port, and moves it to a unix socket at its next start", async () => {
    const d = await makeDriver();
    const name = `lvt-old-${randomUUID().slice(0, 6)}`;
    await d.create(vmSpec(name, randomUUID()));
    // As main's agent defined it: VNC on a 127.0.0.1 port.
    const xml = (await virsh("dumpxml", "--inactive", `hv-${name}`)).replace(
      /<graphics[\s\S]*?<\/graphics>/,
      `<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/></graphics>`,
    );
    const file = join(dir, `${name}.xml`);
    await writeFile(file, xml);
    await virsh("define", file);
    assert.match(await virsh("dumpxml", "--inactive", `hv-${name}`), /<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>/);
    // Running since before the upgrade (adopted): its console keeps working on that port until it stops.
    await virsh("start", `hv-${name}`);
    const adopted = (await d.list()).find((i) => i.name === name);
    const port = Number(adopted?.details.vnc_port);
    assert.ok(port >= 5900, `vnc_port ${adopted?.details.vnc_port}`);
    assert.deepEqual(await d.console(name, "vnc"), { kind: "vnc", host: "127.0.0.1", port });
    assert.equal(await rfbBanner({ host: "127.0.0.1", port }), "RFB 003.008\n");
    assert.equal((await d.stop(name, 1000)).state, "stopped");
    const running = await d.start(name);
    assert.match(running.details.vnc_socket ?? "", /vnc\.sock$/);
    assert.match(await virsh("dumpxml", "--inactive", `hv-${name}`), /<listen type='socket'\/>/);
    assert.deepEqual(await listeningTcpPorts(await qemuPid(`hv-${name}`)), []);
    await d.destroy(name);
  });

  it("leaves another agent's domains alone: not listed, not inspected, not destroyed, not replaced", async () => {
    const mine = await makeDriver();
    const theirs = await makeDriver(`other-${process.pid}`);
    const name = `lvt-own-${randomUUID().slice(0, 6)}`;
    const uid = randomUUID();
    await theirs.create(vmSpec(name, uid));
    assert.ok((await theirs.list()).some((i) => i.name === name));
    assert.equal(
      (await mine.list()).some((i) => i.name === name),
      false,
      "not in my list",
    );
    assert.equal(await mine.inspect(name), undefined);
    await assert.rejects(mine.destroy(name), /managed by other-\d+, not by lvt-\d+; not destroying it/);
    await assert.rejects(mine.create(vmSpec(name, randomUUID())), /exists and is managed by other-\d+/);
    assert.equal(await domainExists(name), true, "still there");
    assert.equal((await theirs.inspect(name))?.uid, uid);
    await theirs.destroy(name);
    assert.equal(await domainExists(name), false);
  });

  it("reconnects after the libvirt connection drops: the VM keeps running, calls and events resume", async () => {
    // A unix-socket relay in front of libvirtd that the test can cut, as a daemon restart would.
    const relayPath = join(dir, `relay-${randomUUID().slice(0, 6)}.sock`);
    const pairs = new Set<Socket>();
    const relay = createServer((client) => {
      const upstream = connect(socket);
      for (const s of [client, upstream]) {
        pairs.add(s);
        s.on("error", () => undefined);
        s.on("close", () => pairs.delete(s));
      }
      client.pipe(upstream).pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    await new Promise<void>((resolve) => relay.listen(relayPath, resolve));
    const d = new LibvirtDriver({ stateDir: join(dir, "state"), imageDir, socketPath: relayPath, domainType: "qemu", owner: OWNER });
    drivers.push(d);
    const name = `lvt-reconn-${randomUUID().slice(0, 6)}`;
    try {
      await d.create(vmSpec(name, randomUUID()));
      const started = await d.start(name);
      await waitForMarker(d, name);
      const domId = await virsh("domid", `hv-${name}`);
      const ac = new AbortController();
      const seen: string[] = [];
      const watching = (async () => {
        for await (const ev of d.events({ signal: ac.signal })) if (ev.name === name) seen.push(ev.state);
      })();
      assert.ok(pairs.size > 0, "the driver is connected through the relay");
      for (const s of pairs) s.destroy();
      // The next call opens a new connection; the domain was never touched.
      const again = await until("inspect after the drop", () => d.inspect(name).catch(() => undefined), 30_000, 200);
      assert.equal(again.state, "running");
      assert.equal(again.startedAt, started.startedAt);
      assert.equal(await virsh("domid", `hv-${name}`), domId);
      // Events flow again on the new connection: stop is seen without polling.
      await until("event subscription re-established", () => pairs.size >= 2, 30_000, 100);
      await d.stop(name, 60_000);
      await until("a stopped event after the reconnect", () => seen.includes("stopped"), 60_000, 100);
      ac.abort();
      await watching;
    } finally {
      await d.destroy(name).catch(() => undefined);
      await d.close();
      await new Promise<void>((resolve) => relay.close(() => resolve()));
      for (const s of pairs) s.destroy();
    }
  });

  it("keeps XML metacharacters in labels as data, and refuses names, paths and bridges it cannot accept", async () => {
    const d = await makeDriver();
    const name = `lvt-xml-${randomUUID().slice(0, 6)}`;
    const labels = { app: `</hv:label></hv:labels><devices><disk type='file'><source file='/etc/shadow'/>`, "x.io/q": `"'&<>` };
    await d.create(vmSpec(name, randomUUID(), { labels }));
    const xml = await virsh("dumpxml", `hv-${name}`);
    assert.doesNotMatch(xml, /\/etc\/shadow'\/>/, "no injected element");
    assert.equal((await virsh("domblklist", `hv-${name}`)).includes("/etc/shadow"), false);
    const listed = (await d.list()).find((i) => i.name === name);
    assert.ok(listed, "the domain is ours and listed");
    await d.destroy(name);

    for (const [spec, message] of [
      [vmSpec("Bad<Name>", randomUUID()), /name: "Bad<Name>" is not a DNS label/],
      [
        vmSpec(`lvt-p-${randomUUID().slice(0, 6)}`, randomUUID(), { kernel: "../../../../etc/passwd" }),
        /kernel: .* (outside the image directory|not found)/,
      ],
      [
        vmSpec(`lvt-p-${randomUUID().slice(0, 6)}`, randomUUID(), { image: "/etc/passwd" }),
        /image: "\/etc\/passwd" is outside the image directory/,
      ],
      [
        vmSpec(`lvt-p-${randomUUID().slice(0, 6)}`, randomUUID(), { config: { network: "bridge:br0'/><x" } }),
        /bridge .* is not an interface name/,
      ],
      [
        // A well-formed bridge this node does not allow (allowed-bridges is empty by default).
        vmSpec(`lvt-p-${randomUUID().slice(0, 6)}`, randomUUID(), { config: { network: "bridge:br0" } }),
        /^driver_config\.network: "bridge:br0" is not allowed on node lvt-\d+ \(allowed-bridges: \[\]\)$/,
      ],
      [vmSpec(`lvt-p-${randomUUID().slice(0, 6)}`, randomUUID(), { command: ["/bin/sh"] }), /command, args and env are for containers/],
    ] as const) {
      await assert.rejects(d.create(spec), (e: unknown) => e instanceof InvalidSpecError && message.test(e.message));
      assert.equal(await domainExists(spec.name), false, `nothing defined for ${spec.name}`);
    }
  });
});
