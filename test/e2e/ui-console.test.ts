// The consoles in a real browser against a real VM, on the system as production runs it: etcd on
// TLS with client-certificate auth, hypervisor-server on https (serving the built UI from dist/ui)
// with etcd auth on, a hypervisor-agent with the libvirt driver joined with a token (mutual TLS
// between server and agent), and Debian's Chromium on the HTML5 desktop page
// (/desktop/?instance=<vm>), trusting exactly this server's certificate, so consoles are wss://.
// The VM's screen reaches the noVNC canvas; the ticket the page used is refused a second time;
// text pasted in the page arrives in the guest as key presses; after the server dies the page
// reconnects by itself; &kind=serial runs a command on the serial console typed into the terminal;
// a viewer gets no console, and a revoked token makes the page ask for another.
// The app's Console tab shows the same through the VncConsole and SerialConsole components. Pages
// sign in with the bootstrap admin token (the desktop page's dialog, the app's sign-in page): the
// console tickets are what that token buys.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { Browser, Locator, Page } from "playwright-core";
import WebSocket from "ws";
import { AccessService } from "../../api/gen/hypervisor/v1/access_pb.js";
import { ConsoleKind, ConsoleService } from "../../api/gen/hypervisor/v1/console_pb.js";
import { InstanceService, Phase } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { launchBrowser, screenshot, signIn, signInDesktop } from "../support/browser.js";
import { adminToken, asAdmin, ctlFor, joinArgs, joinToken, startSecureEtcd, type SecureEtcd } from "../support/cluster.js";
import { GUEST_CMD_DONE, GUEST_CTRL_ALT_DEL_MARKER, GUEST_READY_MARKER, testGuest } from "../support/guest.js";
import { ensureLibvirtd } from "../support/libvirt.js";
import { binPath, freePort, Proc, repoRoot, until } from "../support/procs.js";

const run = promisify(execFile);
const DESKTOP_INDEX = join(repoRoot, "dist/ui/pkg/virtual-apps-and-desktop/html-web-access/index.html");

/** The DOM the canvas check needs (this project's Node tsconfig has no DOM types). */
interface CanvasLike {
  width: number;
  height: number;
  clientWidth: number;
  getContext(kind: "2d"): { getImageData(x: number, y: number, w: number, h: number): { data: Uint8ClampedArray } } | null;
}

/** What the page's canvas shows: how many pixels are not black, and how many colours. */
interface CanvasStats {
  width: number;
  height: number;
  lit: number;
  colours: number;
}

describe("consoles in the browser: the desktop page and the app's Console tab on a real VM", { timeout: 900_000 }, () => {
  let dir: string;
  let etcd: SecureEtcd;
  /** The cluster CA (PEM): what the API and WebSocket clients here trust. */
  let ca: string;
  let base: string;
  let token: string;
  let server: Proc;
  let agent: Proc;
  let browser: Browser;
  const vm = `ui-vm-${process.pid}`;
  /** The API as the bootstrap admin. */
  const api = () =>
    createConnectTransport({ baseUrl: base, httpVersion: "1.1", nodeOptions: { ca }, interceptors: [asAdmin(etcd.caFile)] });

  const startServer = () =>
    new Proc("server", [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      ...["--listen", new URL(base).host, "--data-dir", join(dir, "server")],
    ]);
  const startAgent = () =>
    new Proc("agent", [
      binPath("hypervisor-agent"),
      "--node-name",
      "ui-node",
      "--etcd-endpoints",
      etcd.etcd.endpoint,
      "--heartbeat-ttl",
      "3",
      "--drivers",
      "libvirt",
      "--data-dir",
      join(dir, "agent"),
      "--libvirt-image-dir",
      join(dir, "images"),
      "--libvirt-domain-type",
      "qemu",
      ...joinArgs(base, token),
    ]);

  before(async () => {
    if (!existsSync(DESKTOP_INDEX)) throw new Error(`${DESKTOP_INDEX} is missing: build the UI first (npx vite build, or make build)`);
    await ensureLibvirtd();
    const guest = await testGuest();
    dir = await mkdtemp(join(tmpdir(), "hv-e2e-ui-"));
    await chmod(dir, 0o755); // QEMU (libvirt-qemu) reaches the agent's state through it
    await mkdir(join(dir, "images"), { mode: 0o755 });
    await copyFile(guest.kernel, join(dir, "images", "vmlinuz"));
    await copyFile(guest.initrd, join(dir, "images", "initrd.img"));
    etcd = await startSecureEtcd(join(dir, "server", "pki"));
    ca = await readFile(etcd.caFile, "utf8");
    base = `https://127.0.0.1:${await freePort()}`;
    server = startServer();
    await server.waitFor(/server listening/);
    token = await joinToken(ctlFor(base, etcd.caFile), 1);
    agent = startAgent();
    await agent.waitFor(/agent started/);

    const instances = createClient(InstanceService, api());
    await instances.createInstance({
      name: vm,
      spec: { driver: "libvirt", vcpus: 1, memoryMib: 256n, kernel: "vmlinuz", initrd: "initrd.img", cmdline: guest.cmdline },
    });
    await until(
      "the VM to run",
      async () => (await instances.getInstance({ name: vm })).instance?.status?.phase === Phase.RUNNING,
      300_000,
      500,
    );
    await until(
      "the guest marker in the console log",
      async () => {
        let log = "";
        for await (const chunk of instances.getInstanceLogs({ name: vm })) log += Buffer.from(chunk.data).toString("latin1");
        return log.includes(GUEST_READY_MARKER);
      },
      300_000,
      1000,
    );
    browser = await launchBrowser({ trustServerCert: join(etcd.pkiDir, "server.crt") });
  });

  after(async () => {
    await browser?.close().catch(() => undefined);
    if (base && agent?.running) {
      const instances = createClient(InstanceService, api());
      await instances.deleteInstance({ name: vm }).catch(() => undefined);
      await until(
        "the domain to be gone",
        async () =>
          await run("virsh", ["-c", "qemu:///system", "dominfo", `hv-${vm}`]).then(
            () => false,
            () => true,
          ),
        120_000,
        500,
      ).catch(() => undefined);
    }
    await run("virsh", ["-c", "qemu:///system", "destroy", `hv-${vm}`]).catch(() => undefined);
    await run("virsh", ["-c", "qemu:///system", "undefine", `hv-${vm}`]).catch(() => undefined);
    await agent?.stop();
    await server?.stop();
    await etcd?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** What crossed each page's WebSockets (serial consoles are text), for failure messages. */
  const framesOf = new WeakMap<Page, string[]>();
  async function newPage(viewport = { width: 1024, height: 640 }): Promise<Page> {
    const page = await browser.newPage({ viewport });
    const frames: string[] = [];
    framesOf.set(page, frames);
    page.on("websocket", (ws) => {
      ws.on("framesent", (f) => frames.push(`> ${JSON.stringify(String(f.payload))}`));
      ws.on("framereceived", (f) => frames.push(`< ${JSON.stringify(String(f.payload))}`));
    });
    return page;
  }

  /** The desktop page for the VM, with the console WebSocket URLs it opens collected. */
  function openDesktop(query: string): Promise<{ page: Page; sockets: string[] }> {
    return openDesktopAs(adminToken(etcd.caFile), query);
  }

  /** The desktop page for the VM signed in with `token`. */
  async function openDesktopAs(token: string, query = ""): Promise<{ page: Page; sockets: string[] }> {
    const page = await newPage();
    const sockets: string[] = [];
    page.on("websocket", (ws) => sockets.push(ws.url()));
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`${base}/desktop/?instance=${vm}${query}`);
    // A new browser context: no token in this tab yet, so the page asks for one.
    await signInDesktop(page, token);
    await page
      .locator('[data-testid="desktop-status"][data-state="connected"]')
      .waitFor({ timeout: 60_000 })
      .catch(async (e: unknown) => {
        const status = await page.locator('[data-testid="desktop-status"]').textContent();
        throw new Error(`the page did not connect: status ${JSON.stringify(status)}, page errors ${JSON.stringify(errors)} (${String(e)})`);
      });
    return { page, sockets };
  }

  const canvasStats = (page: Page) =>
    page.evaluate((): CanvasStats | undefined => {
      const doc = (globalThis as unknown as { document: { querySelector(s: string): CanvasLike | null } }).document;
      const canvas = doc.querySelector('[data-testid="vnc-canvas-container"] canvas');
      const ctx = canvas?.getContext("2d");
      if (!canvas || !ctx || canvas.width === 0 || canvas.height === 0) return undefined;
      const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
      let lit = 0;
      const colours = new Set<number>();
      for (let i = 0; i < data.length; i += 4) {
        const [r, g, b] = [data[i]!, data[i + 1]!, data[i + 2]!];
        if (r + g + b > 48) lit++;
        if (colours.size < 64) colours.add((r << 16) | (g << 8) | b);
      }
      return { width: canvas.width, height: canvas.height, lit, colours: colours.size };
    });

  const displayedWidth = (page: Page) =>
    page.evaluate(() => {
      const doc = (globalThis as unknown as { document: { querySelector(s: string): CanvasLike | null } }).document;
      return doc.querySelector('[data-testid="vnc-canvas-container"] canvas')?.clientWidth ?? 0;
    });

  /** A picture: some lit pixels in more than one colour (the guest's text on the VGA console). */
  const painted = async (page: Page) => {
    const s = await canvasStats(page);
    return s && s.lit > 200 && s.colours >= 2 ? s : undefined;
  };

  it("shows the VM's screen on the desktop page; the ticket the page used is refused a second time", async () => {
    const { page, sockets } = await openDesktop("");
    try {
      const stats = await until("the noVNC canvas to show the VM's screen", () => painted(page), 60_000, 250);
      assert.ok(stats.width >= 640 && stats.height >= 350, `the VGA screen's size, got ${stats.width}×${stats.height}`);
      assert.equal(await page.title(), `${vm} · desktop`);
      await screenshot(page, "console");

      // Fit to window scales the 720×400 screen up to the window; 1:1 shows it as it is; the fit
      // follows the window's size.
      const shown = () => displayedWidth(page);
      assert.ok((await shown()) > stats.width, `scaled to the window: ${await shown()} px for ${stats.width}`);
      await page.locator("#fit").click();
      assert.equal(await page.locator("#fit").getAttribute("aria-pressed"), "false");
      await until("the screen shown 1:1", async () => (await shown()) === stats.width, 10_000);
      await page.locator("#fit").click();
      await until("the screen scaled again", async () => (await shown()) > stats.width, 10_000);
      await page.setViewportSize({ width: 800, height: 500 });
      await until("the screen scaled to the smaller window", async () => (await shown()) <= 800 && (await shown()) > stats.width, 10_000);

      const consoleSockets = sockets.filter((u) => new URL(u).pathname.startsWith("/console/"));
      assert.equal(consoleSockets.length, 1, `one console WebSocket, got ${JSON.stringify(sockets)}`);
      assert.equal(new URL(consoleSockets[0]!).protocol, "wss:", "the console rides the server's TLS");
      assert.equal(await refusedWith(consoleSockets[0]!, ca), 403, "the ticket already used by the page is refused");
      assert.equal(
        await page.locator('[data-testid="desktop-status"]').getAttribute("data-state"),
        "connected",
        "the page's own console stays up",
      );
    } finally {
      await page.close();
    }
  });

  it("types text pasted on the page into the guest as key presses", async () => {
    const { page } = await openDesktop("");
    const serial = await openSerialSocket();
    try {
      // The guest reads one line from its VGA console's keyboard and answers on the serial line.
      serial.send(Buffer.from('read -r l </dev/tty1; echo "typed:$l"\n'));
      await new Promise((r) => setTimeout(r, 3000)); // keys typed before the read opens tty1 are lost
      await page.locator("#paste").click();
      await page.locator("#paste-text").fill("Hv-typed_42!\n");
      await page.locator("#paste-send").click();
      await until("the typed line on the serial console", () => serial.received().includes(GUEST_CMD_DONE), 60_000, 200);
      assert.match(serial.received(), /typed:Hv-typed_42!\r?\n/, "letters, digits and shifted characters arrive as typed");
      await screenshot(page, "console-typed");
    } finally {
      await serial.close();
      await page.close();
    }
  });

  it("sends Ctrl-Alt-Del to the guest from the page's button", async () => {
    const { page } = await openDesktop("");
    const serial = await openSerialSocket();
    try {
      await until("the picture", () => painted(page), 60_000, 250);
      assert.ok(!serial.received().includes(GUEST_CTRL_ALT_DEL_MARKER));
      await page.locator("#cad").click();
      await until(
        "the guest's Ctrl-Alt-Del marker on the serial console",
        () => serial.received().includes(GUEST_CTRL_ALT_DEL_MARKER),
        30_000,
        200,
      );
    } finally {
      await serial.close();
      await page.close();
    }
  });

  it("reconnects by itself after the server dies, and Reconnect opens a new console", async () => {
    const { page, sockets } = await openDesktop("");
    try {
      await until("the picture", () => painted(page), 60_000, 250);
      const status = page.locator('[data-testid="desktop-status"]');
      // The server carries the console (the agent is on this machine, so the server dials the
      // VNC server itself): losing the server drops the console, and the page retries.
      await server.kill9();
      await page.locator('[data-testid="desktop-status"][data-state="disconnected"]').waitFor({ timeout: 30_000 });
      assert.match((await status.textContent()) ?? "", /retrying in \d+ s/);
      server = startServer();
      await server.waitFor(/server listening/);
      await page.locator('[data-testid="desktop-status"][data-state="connected"]').waitFor({ timeout: 120_000 });
      await until("the picture after reconnecting", () => painted(page), 60_000, 250);

      const before = sockets.length;
      await page.locator("#reconnect").click();
      await until("a new console WebSocket", () => sockets.length > before, 30_000);
      await page.locator('[data-testid="desktop-status"][data-state="connected"]').waitFor({ timeout: 60_000 });
      assert.notEqual(sockets.at(-1), sockets.at(-2), "a new ticket for each connection");
    } finally {
      await page.close();
    }
  });

  it("the app's Console tab: VncConsole shows the screen, SerialConsole runs a command", async () => {
    const page = await newPage({ width: 1280, height: 900 });
    try {
      await page.goto(`${base}/instances/${vm}`);
      await signIn(page, adminToken(etcd.caFile));
      await page.locator('[data-testid="tab-console"]').click();
      await page.locator('[data-testid="vnc-status"][data-state="connected"]').waitFor({ timeout: 60_000 });
      await until("the VM's screen in VncConsole", () => painted(page), 60_000, 250);
      await screenshot(page, "app-console-vnc");

      await page.locator('[data-testid="console-serial"]').click();
      await page.locator('[data-testid="serial-status"][data-state="connected"]').waitFor({ timeout: 60_000 });
      const terminal = page.locator('[data-testid="serial-terminal"]');
      await runInTerminal(page, terminal, "echo app-$((5*5))", "app-25");
      await screenshot(page, "app-console-serial");
    } finally {
      await page.close();
    }
  });

  it("runs a command typed into the serial console page (&kind=serial)", async () => {
    const { page } = await openDesktop("&kind=serial");
    try {
      assert.equal(await page.title(), `${vm} · serial console`);
      const terminal = page.locator('[data-testid="serial-terminal"]');
      // The guest runs each line it reads with sh and prints the output, then GUEST_CMD_DONE; it
      // does not echo, so the terminal shows only the answer.
      await runInTerminal(page, terminal, "echo ui-$((6*7))", "ui-42");
      const text = await until(
        "the command's end in the terminal",
        async () => {
          const t = await terminal.locator(".xterm-rows").innerText();
          return t.includes(GUEST_CMD_DONE) ? t : undefined;
        },
        30_000,
        250,
      );
      assert.match(text, new RegExp(`ui-42\\s+${GUEST_CMD_DONE}`));
      await screenshot(page, "serial-console");
    } finally {
      await page.close();
    }
  });

  it("says what is wrong, without retrying, for an instance that does not exist or no instance", async () => {
    const page = await newPage();
    try {
      await page.goto(`${base}/desktop/?instance=no-such-vm`);
      await signInDesktop(page, adminToken(etcd.caFile));
      const status = page.locator('[data-testid="desktop-status"][data-state="disconnected"]');
      await status.waitFor({ timeout: 30_000 });
      const text = (await status.textContent()) ?? "";
      assert.match(text, /instance "?no-such-vm"? not found/);
      assert.doesNotMatch(text, /retrying/);
      await page.goto(`${base}/desktop/`);
      await page.locator('[data-testid="desktop-status"][data-state="disconnected"]').waitFor({ timeout: 30_000 });
      assert.match((await page.locator(".error").textContent()) ?? "", /needs \?instance=<name>/);
    } finally {
      await page.close();
    }
  });

  it("refuses a viewer's console in words, and asks again for a token the server revoked", async () => {
    const access = createClient(AccessService, api());
    const viewer = await access.createToken({ user: "vic", roles: ["viewer"], ttlSeconds: 3600 });
    const operator = await access.createToken({ user: "olga", roles: ["operator"], ttlSeconds: 3600 });
    const page = await newPage();
    try {
      // A viewer's token is good, but buys no ticket: a final refusal naming the right.
      await page.goto(`${base}/desktop/?instance=${vm}`);
      await signInDesktop(page, viewer.token);
      const status = page.locator('[data-testid="desktop-status"][data-state="disconnected"]');
      await status.waitFor({ timeout: 30_000 });
      const text = (await status.textContent()) ?? "";
      assert.match(text, /may not instances:console in project default \(roles: viewer\)/);
      assert.doesNotMatch(text, /retrying/);
    } finally {
      await page.close();
    }

    const { page: desktop } = await openDesktopAs(operator.token);
    try {
      // Revoked: the next ticket is refused as Unauthenticated; the page asks for a token with
      // the server's words, and connects again once one is accepted.
      await access.revokeToken({ id: operator.apiToken!.id });
      await desktop.locator("#reconnect").click();
      const why = desktop.locator('[data-testid="desktop-signin"][open] [data-testid="desktop-signin-error"]');
      await why.waitFor({ timeout: 30_000 });
      assert.equal(await why.textContent(), `token ${operator.apiToken!.id}: revoked`);
      await signInDesktop(desktop, adminToken(etcd.caFile));
      await desktop.locator('[data-testid="desktop-status"][data-state="connected"]').waitFor({ timeout: 60_000 });
      await until("the picture after signing in again", () => painted(desktop), 60_000, 250);
    } finally {
      await desktop.close();
    }
  });

  /**
   * Types a command into the terminal and waits for `expected` in what it shows; the text. Types
   * again when nothing came after a while, and says what crossed the WebSocket when it fails.
   */
  async function runInTerminal(page: Page, terminal: Locator, command: string, expected: string): Promise<string> {
    const frames = framesOf.get(page) ?? [];
    const text = () => terminal.locator(".xterm-rows").innerText();
    await terminal.click();
    for (let attempt = 1; ; attempt++) {
      await page.keyboard.type(command);
      await page.keyboard.press("Enter");
      const shown = await until(
        `${expected} in the terminal`,
        async () => ((await text()).includes(expected) ? text() : undefined),
        10_000,
        250,
      ).catch(() => undefined);
      if (shown) return shown;
      if (attempt === 6)
        throw new Error(
          `${expected} never showed; status ${JSON.stringify(await page.locator("[data-state]").first().getAttribute("data-state"))}, ` +
            `terminal ${JSON.stringify(await text())}, frames ${frames.slice(-40).join(" ")}`,
        );
    }
  }

  /** The serial console through the API and a WebSocket, outside the browser. */
  async function openSerialSocket(): Promise<{ send(b: Buffer): void; received(): string; close(): Promise<void> }> {
    const { path } = await createClient(ConsoleService, api()).createConsoleTicket({ name: vm, kind: ConsoleKind.SERIAL });
    const ws = new WebSocket(`${base.replace(/^http/, "ws")}${path}`, { ca });
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    let got = "";
    ws.on("message", (d: Buffer) => (got += d.toString("utf8")));
    return {
      send: (b) => ws.send(b),
      received: () => got,
      close: () =>
        new Promise<void>((resolve) => {
          if (ws.readyState === WebSocket.CLOSED) return resolve();
          ws.once("close", () => resolve());
          ws.close();
        }),
    };
  }
});

/** The HTTP status a WebSocket handshake is refused with (0 if it was accepted). */
function refusedWith(url: string, ca: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ["binary"], { ca });
    ws.once("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
      ws.terminate();
    });
    ws.once("open", () => {
      ws.close();
      resolve(0);
    });
    ws.once("error", (e) => (e.message.includes("Unexpected server response") ? undefined : reject(e)));
  });
}
