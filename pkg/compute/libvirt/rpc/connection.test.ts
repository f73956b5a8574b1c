// LibvirtConnection against the real libvirtd, with a real TCG guest: every procedure the driver
// uses, its error replies as typed errors, lifecycle events as they happen, and many calls in
// flight on one socket. virsh is the independent witness of what the daemon holds.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { chmod, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { GUEST_READY_MARKER, testGuest, type TestGuest } from "../../../../test/support/guest.js";
import { ensureLibvirtd } from "../../../../test/support/libvirt.js";
import { until } from "../../../../test/support/procs.js";
import {
  ConnectionClosedError,
  DomainState,
  DomainXmlFlags,
  ErrorCode,
  isNoDomain,
  isOperationInvalid,
  LibvirtConnection,
  LibvirtError,
  LifecycleEvent,
  parseUuid,
  ShutoffReason,
  uuidString,
  type DomainLifecycleEvent,
} from "./index.js";

const run = promisify(execFile);
const virsh = async (...args: string[]) => (await run("virsh", ["-c", "qemu:///system", ...args])).stdout.trim();

let socket: string;
let guest: TestGuest;
let dir: string;
let conn: LibvirtConnection;

/** A minimal TCG domain of the test guest; the name is ours (rpct-*) so cleanup cannot touch others. */
function domainXml(name: string, uuid: string, memMiB = 128): string {
  return `<domain type="qemu">
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  <memory unit="MiB">${memMiB}</memory>
  <vcpu>1</vcpu>
  <os><type arch="x86_64" machine="pc">hvm</type>
    <kernel>${guest.kernel}</kernel><initrd>${guest.initrd}</initrd><cmdline>${guest.cmdline}</cmdline></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <serial type="pty"><log file="${join(dir, `${name}.log`)}"/><target port="0"/></serial>
    <memballoon model="virtio"><stats period="1"/></memballoon>
  </devices>
</domain>`;
}

const markerSeen = (name: string) =>
  until(
    `${GUEST_READY_MARKER} from ${name}`,
    async () => ((await readFile(join(dir, `${name}.log`), "utf8").catch(() => "")).includes(GUEST_READY_MARKER) ? true : undefined),
    180_000,
    250,
  );

before(async () => {
  socket = await ensureLibvirtd();
  guest = await testGuest();
  dir = await mkdtemp(join(tmpdir(), "hv-rpct-"));
  await chmod(dir, 0o755); // virtlogd and QEMU write the serial log here
  conn = await LibvirtConnection.open(socket);
});

after(async () => {
  for (const line of (await virsh("list", "--all", "--name").catch(() => "")).split("\n")) {
    const n = line.trim();
    if (!n.startsWith("rpct-")) continue;
    await virsh("destroy", n).catch(() => undefined);
    await virsh("undefine", n).catch(() => undefined);
  }
  await conn?.close();
  await rm(dir, { recursive: true, force: true });
});

describe("LibvirtConnection against libvirtd", () => {
  it("reports the versions, hostname and node facts virsh reports", async () => {
    const [lib, hv, host, info, free, type, uri] = await Promise.all([
      conn.getLibVersion(),
      conn.getVersion(),
      conn.getHostname(),
      conn.nodeGetInfo(),
      conn.nodeGetFreeMemory(),
      conn.getType(),
      conn.getUri(),
    ]);
    const version = await virsh("version");
    const dotted = (v: number) => `${Math.floor(v / 1e6)}.${Math.floor(v / 1e3) % 1000}.${v % 1000}`;
    assert.match(version, new RegExp(`Using library: libvirt ${dotted(lib).replace(/\./g, "\\.")}`));
    assert.match(version, new RegExp(`Running hypervisor: QEMU ${dotted(hv).replace(/\./g, "\\.")}`));
    assert.equal(host, await virsh("hostname"));
    assert.equal(type, "QEMU");
    assert.equal(uri, "qemu:///system");
    const nodeinfo = await virsh("nodeinfo");
    assert.match(nodeinfo, new RegExp(`CPU\\(s\\):\\s+${info.cpus}\\n`));
    assert.match(nodeinfo, new RegExp(`Memory size:\\s+${info.memoryKiB} KiB`));
    assert.ok(free > 0n && free < info.memoryKiB * 1024n, `free ${free} of ${info.memoryKiB} KiB`);
  });

  it("turns an error reply into a LibvirtError with libvirt's code and message", async () => {
    const name = `rpct-missing-${randomUUID().slice(0, 8)}`;
    const e = await conn.lookupByName(name).then(
      () => assert.fail("found a domain that does not exist"),
      (e: unknown) => e,
    );
    assert.ok(e instanceof LibvirtError);
    assert.ok(isNoDomain(e));
    assert.equal(e.code, ErrorCode.NO_DOMAIN);
    assert.match(e.libvirtMessage, new RegExp(name));
    // A refused definition: the XML's own error, and the connection carries on.
    await assert.rejects(
      conn.defineXml("<domain type='qemu'><name>x"),
      (e: unknown) => e instanceof LibvirtError && e.code === ErrorCode.XML_DETAIL && /Premature end of data/.test(e.libvirtMessage),
    );
    assert.ok((await conn.getHostname()).length > 0);
  });

  it("defines, looks up by name and UUID, lists and undefines a domain", async () => {
    const name = `rpct-def-${randomUUID().slice(0, 8)}`;
    const uuid = randomUUID();
    const dom = await conn.defineXml(domainXml(name, uuid));
    assert.equal(dom.name, name);
    assert.equal(uuidString(dom.uuid), uuid);
    assert.equal(dom.id, -1, "defined, not running");
    assert.deepEqual(await conn.lookupByName(name), dom);
    assert.deepEqual(await conn.lookupByUuid(parseUuid(uuid)), dom);
    assert.ok((await conn.listAllDomains()).some((d) => d.name === name));
    assert.equal(await virsh("domuuid", name), uuid);
    assert.deepEqual(await conn.getState(dom), { state: DomainState.SHUTOFF, reason: ShutoffReason.UNKNOWN });
    const xml = await conn.getXmlDesc(dom, DomainXmlFlags.INACTIVE);
    assert.match(xml, new RegExp(`<uuid>${uuid}</uuid>`));
    // A second domain with the same name and another UUID is refused, naming the one that exists.
    await assert.rejects(
      conn.createXml(domainXml(name, randomUUID())),
      (e: unknown) =>
        e instanceof LibvirtError && e.code === ErrorCode.OPERATION_FAILED && e.libvirtMessage.includes(`already exists with uuid ${uuid}`),
    );
    await conn.undefine(dom);
    await assert.rejects(conn.lookupByName(name), isNoDomain);
    await assert.rejects(virsh("dominfo", name));
  });

  it("runs a guest through start, info, suspend, resume, balloon, stats, reboot and destroy, with the events of each", async () => {
    const name = `rpct-life-${randomUUID().slice(0, 8)}`;
    const events: DomainLifecycleEvent[] = [];
    const ac = new AbortController();
    const stream = conn.lifecycleEvents({ signal: ac.signal });
    await stream.ready;
    const collecting = (async () => {
      for await (const ev of stream) if (ev.domain.name === name) events.push(ev);
    })();
    const seen = (event: number) =>
      until(`event ${event} for ${name}`, () => (events.some((e) => e.event === event) ? true : undefined), 60_000, 50);

    const defined = await conn.defineXml(domainXml(name, randomUUID(), 256));
    await seen(LifecycleEvent.DEFINED);
    const dom = await conn.domainCreate(defined);
    assert.ok(dom.id > 0, `running domain id ${dom.id}`);
    await seen(LifecycleEvent.STARTED);
    assert.equal((await conn.getState(dom)).state, DomainState.RUNNING);
    assert.equal(await virsh("domstate", name), "running");
    await markerSeen(name);

    const info = await conn.getInfo(dom);
    assert.equal(info.state, DomainState.RUNNING);
    assert.equal(info.maxMemKiB, 256n * 1024n);
    assert.equal(info.nrVirtCpu, 1);
    assert.ok(info.cpuTimeNs > 0n);

    await conn.suspend(dom);
    await seen(LifecycleEvent.SUSPENDED);
    assert.equal(await virsh("domstate", name), "paused");
    await conn.resume(dom);
    await seen(LifecycleEvent.RESUMED);
    assert.equal(await virsh("domstate", name), "running");

    // The balloon: lower the target live; the guest's driver gives the memory back.
    await conn.setMemory(dom, 160n * 1024n, 1 /* LIVE */);
    const stats = await until(
      "actual_balloon at 160 MiB",
      async () => {
        const s = await conn.memoryStats(dom);
        return s.actual_balloon === 160n * 1024n ? s : undefined;
      },
      120_000,
      500,
    );
    assert.ok(
      stats.rss !== undefined && stats.rss > 0n,
      `rss in ${JSON.stringify(stats, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v))}`,
    );
    assert.match(await virsh("dommemstat", name), /actual 163840/);

    await conn.reboot(dom);
    await seen(LifecycleEvent.STARTED); // QEMU reboots in place: still the same domain id
    assert.equal((await conn.lookupByName(name)).id, dom.id);

    await conn.destroy(dom);
    await seen(LifecycleEvent.STOPPED);
    assert.deepEqual(await conn.getState(dom), { state: DomainState.SHUTOFF, reason: ShutoffReason.DESTROYED });
    await assert.rejects(conn.destroy(dom), isOperationInvalid);
    await conn.undefine(dom);
    await seen(LifecycleEvent.UNDEFINED);

    ac.abort();
    await collecting; // an abort ends the iteration normally
    const kinds = events.map((e) => e.event);
    for (const k of [
      LifecycleEvent.DEFINED,
      LifecycleEvent.STARTED,
      LifecycleEvent.SUSPENDED,
      LifecycleEvent.RESUMED,
      LifecycleEvent.STOPPED,
      LifecycleEvent.UNDEFINED,
    ])
      assert.ok(kinds.includes(k), `event ${k} in ${kinds.join(",")}`);
    assert.ok(kinds.indexOf(LifecycleEvent.DEFINED) < kinds.indexOf(LifecycleEvent.STARTED));
    assert.ok(kinds.lastIndexOf(LifecycleEvent.STOPPED) < kinds.lastIndexOf(LifecycleEvent.UNDEFINED));
  });

  it("an ACPI shutdown of a transient guest ends with reason shutdown", async () => {
    const name = `rpct-acpi-${randomUUID().slice(0, 8)}`;
    const dom = await conn.createXml(domainXml(name, randomUUID()));
    await markerSeen(name);
    await conn.shutdown(dom, 1 /* ACPI_POWER_BTN */);
    // A transient domain disappears when it stops: lookup then fails NO_DOMAIN.
    await until(
      `${name} gone`,
      () =>
        conn.lookupByName(name).then(
          () => undefined,
          (e: unknown) => (isNoDomain(e) ? true : Promise.reject(e as Error)),
        ),
      120_000,
      250,
    );
    assert.match(await readFile(join(dir, `${name}.log`), "utf8"), /HYPERVISOR-GUEST-POWEROFF/);
  });

  it("keeps hundreds of calls in flight on one connection, each answered with its own reply", async () => {
    const names = await Promise.all(
      Array.from({ length: 300 }, (_, i) =>
        i % 2
          ? conn.getHostname()
          : conn.lookupByName(`rpct-none-${i}`).then(
              () => "found",
              (e: unknown) => (isNoDomain(e) ? `none-${i}` : "other"),
            ),
      ),
    );
    const host = await conn.getHostname();
    names.forEach((n, i) => assert.equal(n, i % 2 ? host : `none-${i}`));
    assert.equal(conn.rpc.inFlight, 0);
  });

  it("a closed connection fails calls with ConnectionClosedError; a new one works", async () => {
    const c = await LibvirtConnection.open(socket);
    const ac = new AbortController();
    const stream = c.lifecycleEvents({ signal: ac.signal });
    await stream.ready;
    const iterating = (async () => {
      for await (const _ of stream) void _;
    })().then(
      () => undefined,
      (e: unknown) => e,
    );
    await c.close();
    assert.ok((await c.closed) instanceof ConnectionClosedError);
    await assert.rejects(c.getHostname(), ConnectionClosedError);
    assert.ok((await iterating) instanceof ConnectionClosedError, "the event stream ends with the connection");
    await c.close(); // twice is fine
    const again = await LibvirtConnection.open(socket);
    assert.equal(await again.getHostname(), await conn.getHostname());
    await again.close();
  });
});
