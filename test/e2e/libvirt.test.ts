// A real VM end to end as production runs it: etcd on TLS with client-certificate auth,
// hypervisor-server serving TLS, a hypervisor-agent joined with a token (mutual TLS between server
// and agent: logs and consoles cross it; its etcd identity is its node certificate) with the
// libvirt driver on the real libvirtd, driven through hypervisor-ctl. Create → Running → console
// log (also followed) → set-memory reaches the guest's balloon → kill -9 of the agent and a new one
// adopts the running domain (same domain id: not restarted, not duplicated) → delete leaves no domain.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import WebSocket from "ws";
import { ConsoleKind, ConsoleService } from "../../api/gen/hypervisor/v1/console_pb.js";
import { adminToken, asAdmin, ctlFor, joinArgs, joinToken, startSecureEtcd, type Ctl, type SecureEtcd } from "../support/cluster.js";
import { GUEST_CMD_DONE, GUEST_READY_MARKER, guestVmYaml, testGuest } from "../support/guest.js";
import { ensureLibvirtd, listeningTcpPorts, qemuPid } from "../support/libvirt.js";
import { binPath, freePort, Proc, until } from "../support/procs.js";

const run = promisify(execFile);
const virsh = async (...args: string[]) => (await run("virsh", ["-c", "qemu:///system", ...args])).stdout.trim();

interface JsonInstance {
  name: string;
  uid: string;
  status?: { phase?: string; node?: string; startTime?: string; details?: Record<string, string> };
}

describe("a VM through the whole system (etcd, server, agent with libvirt, ctl)", { timeout: 900_000 }, () => {
  let dir: string;
  let etcd: SecureEtcd;
  let port: number;
  let server: Proc;
  let agent: Proc;
  let ctl: Ctl;
  /** The cluster CA (PEM), which the test's own API and WebSocket clients trust. */
  let ca: Buffer;
  let token = "";
  const vm = `e2e-vm-${process.pid}`;

  const url = (scheme = "https") => `${scheme}://127.0.0.1:${port}`;
  // The test's own API client is the bootstrap admin; console WebSockets carry no token (a browser
  // cannot set headers on one): the one-use ticket is their credential.
  const consoleClient = () =>
    createClient(
      ConsoleService,
      createConnectTransport({ baseUrl: url(), httpVersion: "1.1", nodeOptions: { ca }, interceptors: [asAdmin(etcd.caFile)] }),
    );
  /** ctl as a child of its own (a follow, a terminal), as the bootstrap admin like `ctl`. */
  const spawnCtl = (...args: string[]) =>
    spawn(process.execPath, [binPath("hypervisor-ctl"), ...ctl.args, ...args], {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, HYPERVISOR_TOKEN: adminToken(etcd.caFile) },
    });
  const get = async () => JSON.parse(await ctl("instance", "get", vm, "-o", "json")) as JsonInstance;
  // Joined with a token; the agent that replaces a killed one keeps the certificate in its data dir.
  const startAgent = () =>
    new Proc("agent", [
      binPath("hypervisor-agent"),
      "--node-name",
      "vm-node",
      "--etcd-endpoints",
      etcd.etcd.endpoint,
      "--heartbeat-ttl",
      "3",
      "--drivers",
      "mock,libvirt",
      "--data-dir",
      join(dir, "agent"),
      "--libvirt-image-dir",
      join(dir, "images"),
      "--libvirt-domain-type",
      "qemu",
      ...joinArgs(url(), token),
    ]);

  before(async () => {
    await ensureLibvirtd();
    const guest = await testGuest();
    dir = await mkdtemp(join(tmpdir(), "hv-e2e-vm-"));
    await chmod(dir, 0o755); // QEMU (libvirt-qemu) reaches the agent's state through it
    await mkdir(join(dir, "images"), { mode: 0o755 });
    await copyFile(guest.kernel, join(dir, "images", "vmlinuz"));
    await copyFile(guest.initrd, join(dir, "images", "initrd.img"));
    // Without `quiet`: the console log then shows the kernel booting, not only the marker.
    await writeFile(join(dir, "vm.yaml"), guestVmYaml(vm, guest.cmdline.replace(/ ?\bquiet\b/, "")));
    etcd = await startSecureEtcd(join(dir, "server", "pki"));
    ca = await readFile(etcd.caFile);
    port = await freePort();
    ctl = ctlFor(url(), etcd.caFile);
    server = new Proc("server", [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      "--listen",
      `127.0.0.1:${port}`,
      "--data-dir",
      join(dir, "server"),
      "--console-ticket-ttl",
      "2",
    ]);
    await server.waitFor(/server listening/);
    token = await joinToken(ctl, 1);
    agent = startAgent();
    await agent.waitFor(/agent started/);
  });

  after(async () => {
    await run("virsh", ["-c", "qemu:///system", "destroy", `hv-${vm}`]).catch(() => undefined);
    await run("virsh", ["-c", "qemu:///system", "undefine", `hv-${vm}`]).catch(() => undefined);
    await agent?.stop();
    await server?.stop();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("creates the VM and --wait returns once it runs; the node reports the libvirt driver healthy", async () => {
    const nodes = JSON.parse(await ctl("node", "get", "vm-node", "-o", "json")) as {
      drivers?: { name: string; healthy?: boolean; attributes?: Record<string, string> }[];
    };
    const lv = nodes.drivers?.find((d) => d.name === "libvirt");
    assert.equal(lv?.healthy, true);
    assert.match(lv?.attributes?.libvirt_version ?? "", /^\d+\.\d+\.\d+$/);
    await ctl("instance", "create", "-f", join(dir, "vm.yaml"), "--wait", "--timeout", "5m");
    const i = await get();
    assert.equal(i.status?.phase, "PHASE_RUNNING");
    assert.equal(await virsh("domstate", `hv-${vm}`), "running");
    // VNC is on a unix socket (the status names it); nothing of the VM listens on TCP. The
    // console path (a ticket, then a WebSocket through the server) is the way to its screen.
    assert.match(i.status?.details?.vnc_socket ?? "", /^\/.+\/vnc\.sock$/);
    assert.equal(i.status?.details?.vnc_port, undefined);
    assert.deepEqual(await listeningTcpPorts(await qemuPid(`hv-${vm}`)), [], "the QEMU process listens on no TCP port");
  });

  it("refuses a name with XML metacharacters with InvalidArgument, and defines nothing", async () => {
    const bad = await ctl("instance", "create", "x'/><disk", "--driver", "libvirt", "--kernel", "vmlinuz").then(
      () => assert.fail("created"),
      (e: { code?: number; stderr?: string }) => e,
    );
    assert.equal(bad.code, 1);
    assert.match(bad.stderr ?? "", /invalid_argument: .*name/);
    assert.doesNotMatch(await virsh("list", "--all", "--name"), /disk/);
  });

  it("prints the serial console log, and -f follows it", async () => {
    const log = await until(
      "the guest marker in `instance logs`",
      async () => {
        const out = await ctl("instance", "logs", vm);
        return out.includes(GUEST_READY_MARKER) ? out : undefined;
      },
      300_000,
      1000,
    );
    assert.match(log, /Linux version 6\.1/);
    const tail = await ctl("instance", "logs", vm, "--tail", "64");
    assert.ok(tail.length <= 64 && tail.length > 0, `--tail 64 printed ${tail.length} bytes`);

    const follower = spawnCtl("instance", "logs", vm, "-f");
    let followed = "";
    follower.stdout.on("data", (b: Buffer) => (followed += b.toString()));
    const exited = new Promise<number | null>((resolve) => follower.once("exit", (code) => resolve(code)));
    await until("the follower printed the log", () => followed.includes(GUEST_READY_MARKER), 60_000);
    follower.kill("SIGINT");
    assert.equal(await exited, 0, "Ctrl-C ends a follow with exit 0");
  });

  it("set-memory reaches the guest's balloon", async () => {
    await ctl("instance", "set-memory", vm, "160");
    const actual = await until(
      "dommemstat actual 163840",
      async () => {
        const stats = await virsh("dommemstat", `hv-${vm}`);
        return /^actual 163840$/m.test(stats) ? stats : undefined;
      },
      120_000,
      500,
    );
    assert.match(actual, /^actual 163840$/m);
    const i = JSON.parse(await ctl("instance", "get", vm, "-o", "json")) as { spec?: { memoryTargetMib?: string } };
    assert.equal(i.spec?.memoryTargetMib, "160");
  });

  it("opens the VM's VNC console over a WebSocket with a ticket that works once, directly and through the agent", async () => {
    const consoles = consoleClient();
    const { ticket, path, expireTime } = await consoles.createConsoleTicket({ name: vm, kind: ConsoleKind.VNC });
    assert.equal(path, `/console/${ticket}`);
    assert.ok(expireTime && Number(expireTime.seconds) * 1000 > Date.now() - 1000);
    // The agent is on this machine: the server dials the VNC server the agent names.
    await rfbThrough(`${url("wss")}${path}`, ca);
    await until(
      "the server's log of the console",
      () => server.output.some((l) => /console opened.*"via":"direct"|"via":"direct".*console opened/.test(l)),
      10_000,
    );

    // A replica that always tunnels through the agent, as for a node on another machine; the
    // ticket comes from the first server: tickets live in etcd, any replica takes them.
    const tunnelPort = await freePort();
    const viaAgent = new Proc("server-via-agent", [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      "--listen",
      `127.0.0.1:${tunnelPort}`,
      ...["--data-dir", join(dir, "server-via-agent"), "--no-console-local-direct"],
    ]);
    try {
      await viaAgent.waitFor(/server listening/);
      const t = await consoles.createConsoleTicket({ name: vm, kind: ConsoleKind.VNC });
      await rfbThrough(`wss://127.0.0.1:${tunnelPort}${t.path}`, ca);
      await until("the tunnel in the log", () => viaAgent.output.some((l) => /"via":"agent"/.test(l)), 10_000);
      assert.equal(await refusedWith(`${url("wss")}${t.path}`, ca), 403, "a ticket used on one replica is used on all");
    } finally {
      await viaAgent.stop();
    }

    assert.equal(await refusedWith(`${url("wss")}${path}`, ca), 403, "a used ticket is refused");
    assert.equal(await refusedWith(`${url("wss")}/console/${"A".repeat(43)}`, ca), 403, "a forged ticket is refused");
    assert.equal(await refusedWith(`${url("wss")}/console/x'%20or%201=1`, ca), 403, "garbage is refused");
    const late = await consoles.createConsoleTicket({ name: vm, kind: ConsoleKind.VNC });
    await new Promise((r) => setTimeout(r, 2500)); // the server runs with --console-ticket-ttl 2
    assert.equal(await refusedWith(`${url("wss")}${late.path}`, ca), 403, "an expired ticket is refused");
    await assert.rejects(
      consoles.createConsoleTicket({ name: vm, kind: ConsoleKind.UNSPECIFIED }),
      (e: unknown) => ConnectError.from(e).code === Code.InvalidArgument,
    );
    await assert.rejects(
      consoles.createConsoleTicket({ name: "nope", kind: ConsoleKind.VNC }),
      (e: unknown) => ConnectError.from(e).code === Code.NotFound,
    );
  });

  it("opens the serial console: a command typed there gets its answer back", async () => {
    const consoles = consoleClient();
    for (const n of [6, 7]) {
      // Twice: closing the first console releases the pty for the next.
      const { path } = await consoles.createConsoleTicket({ name: vm, kind: ConsoleKind.SERIAL });
      const ws = new WebSocket(`${url("wss")}${path}`, { ca });
      await new Promise<void>((resolve, reject) => {
        ws.once("open", () => resolve());
        ws.once("error", reject);
      });
      let got = "";
      ws.on("message", (d: Buffer) => (got += d.toString("utf8")));
      const answer = await until(
        `the answer to echo on the serial console (${n})`,
        async () => {
          ws.send(Buffer.from(`echo serial-$((${n}*7))\n`));
          await new Promise((r) => setTimeout(r, 500));
          return got.includes(`serial-${n * 7}`) && got.includes(GUEST_CMD_DONE) ? got : undefined;
        },
        60_000,
        0,
      );
      assert.match(answer, new RegExp(`serial-${n * 7}\r?\n`));
      const closed = new Promise<void>((resolve) => ws.once("close", () => resolve()));
      ws.close();
      await closed;
    }
  });

  it("a second serial console replaces the first, so no output is split between them", async () => {
    const consoles = consoleClient();
    const open = async () => {
      const { path } = await consoles.createConsoleTicket({ name: vm, kind: ConsoleKind.SERIAL });
      const ws = new WebSocket(`${url("wss")}${path}`, { ca });
      await new Promise<void>((resolve, reject) => {
        ws.once("open", () => resolve());
        ws.once("error", reject);
      });
      return ws;
    };
    const first = await open();
    const firstClosed = new Promise<void>((resolve) => first.once("close", () => resolve()));
    const second = await open();
    await firstClosed;
    let got = "";
    second.on("message", (d: Buffer) => (got += d.toString("utf8")));
    await until(
      "the answer on the second console",
      async () => {
        second.send(Buffer.from("echo second-$((9*9))\n"));
        await new Promise((r) => setTimeout(r, 500));
        return got.includes("second-81") && got.includes(GUEST_CMD_DONE);
      },
      60_000,
      0,
    );
    second.close();
  });

  it("`instance console` attaches this terminal to the serial console; Ctrl-] detaches", async () => {
    const child = spawnCtl("instance", "console", vm);
    let out = "";
    let err = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString()));
    child.stderr.on("data", (b: Buffer) => (err += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    await until("connected", () => err.includes("Connected to the serial console"), 30_000);
    await until(
      "the answer through ctl",
      async () => {
        child.stdin.write("echo ctl-$((6*7))\n");
        await new Promise((r) => setTimeout(r, 500));
        return out.includes("ctl-42");
      },
      60_000,
      0,
    );
    child.stdin.write(Buffer.from([0x1d]));
    assert.equal(await exited, 0);
    assert.match(err, /Detached/);
    const vnc = await ctl("instance", "console", vm, "--vnc");
    assert.match(vnc, new RegExp(`open in a browser: https://127\\.0\\.0\\.1:${port}/desktop/\\?instance=${vm}`));
    assert.match(vnc, /websocket \(one use, valid \d+s\): wss:\/\/127\.0\.0\.1:\d+\/console\/[A-Za-z0-9_-]{43}/);
    assert.match(vnc, /no TCP port/);
    assert.doesNotMatch(vnc, /:59\d\d\b|vnc:\/\//, "no VNC address to dial around the console path");
  });

  it("a new agent adopts the running VM after kill -9: same domain id, same start time", async () => {
    const before = await get();
    const domId = await virsh("domid", `hv-${vm}`);
    await agent.kill9();
    agent = startAgent();
    await agent.waitFor(/adoption done/);
    await agent.waitFor(/agent started/);
    const after = await until("Running again", async () => {
      const i = await get();
      return i.status?.phase === "PHASE_RUNNING" ? i : undefined;
    });
    assert.equal(await virsh("domid", `hv-${vm}`), domId, "the same QEMU process: not restarted");
    assert.equal(after.status?.startTime, before.status?.startTime);
    assert.equal((await virsh("list", "--all", "--name")).split("\n").filter((n) => n === `hv-${vm}`).length, 1, "not duplicated");
  });

  it("restart boots the guest again; stop shuts it off through ACPI; start brings it back", async () => {
    const before = await get();
    const domId = await virsh("domid", `hv-${vm}`);
    await ctl("instance", "restart", vm, "--wait", "--timeout", "5m");
    const restarted = await get();
    assert.equal(restarted.status?.phase, "PHASE_RUNNING");
    assert.notEqual(restarted.status?.startTime, before.status?.startTime, "a new start time");
    assert.notEqual(await virsh("domid", `hv-${vm}`), domId, "a new QEMU process");

    await ctl("instance", "stop", vm, "--wait", "--timeout", "5m");
    assert.equal((await get()).status?.phase, "PHASE_STOPPED");
    const consoles = consoleClient();
    await assert.rejects(consoles.createConsoleTicket({ name: vm, kind: ConsoleKind.VNC }), (e: unknown) => {
      const ce = ConnectError.from(e);
      return ce.code === Code.FailedPrecondition && ce.rawMessage === `instance "${vm}" is Stopped; a console needs it Running`;
    });
    assert.equal(await virsh("domstate", `hv-${vm}`), "shut off");
    // The guest saw the power button (the restart's stop and this one), not a pulled plug.
    assert.match(await ctl("instance", "logs", vm), /HYPERVISOR-GUEST-POWEROFF/);

    await ctl("instance", "start", vm, "--wait", "--timeout", "5m");
    assert.equal((await get()).status?.phase, "PHASE_RUNNING");
    assert.equal(await virsh("domstate", `hv-${vm}`), "running");
  });

  it("delete --wait leaves no domain", async () => {
    await ctl("instance", "delete", vm, "--wait", "--timeout", "3m");
    await assert.rejects(run("virsh", ["-c", "qemu:///system", "dominfo", `hv-${vm}`]));
  });
});

/** Opens a VNC console WebSocket: the server's banner comes through, and our side of the handshake reaches it. */
async function rfbThrough(url: string, ca: Buffer): Promise<void> {
  const ws = new WebSocket(url, ["binary"], { ca });
  const first = await new Promise<Buffer>((resolve, reject) => {
    ws.once("message", (data: Buffer, isBinary: boolean) => (isBinary ? resolve(data) : reject(new Error("a text frame"))));
    ws.once("error", reject);
  });
  assert.equal(first.toString("latin1"), "RFB 003.008\n", "the VNC server's banner");
  assert.equal(ws.protocol, "binary");
  // The server answers our version with its security types.
  ws.send(Buffer.from("RFB 003.008\n"));
  const security = await new Promise<Buffer>((resolve) => ws.once("message", (d: Buffer) => resolve(d)));
  assert.ok(security.length >= 2 && security[0]! >= 1, `security types ${security.toString("hex")}`);
  const closed = new Promise<void>((resolve) => ws.once("close", () => resolve()));
  ws.close();
  await closed;
}

/** The HTTP status a WebSocket handshake is refused with (fails the test if it is accepted). */
function refusedWith(url: string, ca: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { ca });
    ws.once("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once("open", () => {
      ws.terminate();
      reject(new Error(`${url} was accepted`));
    });
    ws.once("error", () => undefined);
  });
}
