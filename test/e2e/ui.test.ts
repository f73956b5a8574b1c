// The management UI in a real browser against the real system as production runs it: etcd on TLS
// with client-certificate auth, hypervisor-server on https (serving the built UI from dist/ui) with
// etcd auth on, one hypervisor-agent with the mock driver joined with a token, and Debian's
// Chromium trusting exactly this server's certificate (from the test's own cluster CA). The page
// signs in as the people using it do: the bootstrap admin token pasted on the sign-in page.
//
//   static files + SPA fallback ─► sign in as admin ─► create through the form → row appears → Running (same page,
//   no reload, no polling) ─► detail page, "no console log" ─► stop from the list, delete from
//   the detail page → the list follows ─► form errors: the client's and the server's, each under
//   its field ─► dashboard ─► cordon/uncordon ─► a 400 px window ─► a viewer: sees, may not act,
//   and is signed out when its token is revoked; a bad token refused on the sign-in page
import { after, afterEach, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import type { IncomingHttpHeaders } from "node:http";
import { createServer, request } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { Browser, Locator, Page } from "playwright-core";
import { AccessService } from "../../api/gen/hypervisor/v1/access_pb.js";
import { InstanceService, Phase } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeCondition, NodeService } from "../../api/gen/hypervisor/v1/node_pb.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { issueServerCertificate, loadOrCreateCa } from "../../pkg/pki/index.js";
import { launchBrowser, screenshot, signIn } from "../support/browser.js";
import { adminToken, asAdmin, ctlFor, joinArgs, joinToken, startSecureEtcd, type SecureEtcd } from "../support/cluster.js";
import { binPath, freePort, Proc, repoRoot, until } from "../support/procs.js";

const APP_INDEX = join(repoRoot, "dist/ui/control_and_manage_plane/index.html");

/**
 * Whether an MDUI button is disabled: its `disabled` property (Playwright's isDisabled only knows
 * native controls and aria-disabled, which MDUI puts in its shadow DOM).
 */
const disabled = (button: Locator) => button.evaluate((el) => (el as unknown as { disabled?: boolean }).disabled === true);

/** How many items the page's sessionStorage holds (the tab's token is the only one). */
const storedTokens = (page: Page) =>
  page.evaluate(() => (globalThis as unknown as { sessionStorage: { length: number } }).sessionStorage.length);

/**
 * An https request trusting the cluster CA `ca`, with the path sent as written (fetch would
 * normalise "/../", and Node's fetch takes no CA).
 */
function httpsRequest(
  port: number,
  ca: string,
  path: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, ca, method: init.method ?? "GET", headers: init.headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end(init.body);
  });
}

describe("management UI in the browser (etcd, server, mock agent, Chromium)", { timeout: 300_000 }, () => {
  let dir: string;
  let etcd: SecureEtcd;
  /** The cluster CA (PEM): what the API clients here trust. */
  let ca: string;
  let port: number;
  let base: string;
  let server: Proc;
  let agent: Proc;
  let browser: Browser;
  let page: Page;
  /** Connect calls the page made, by method name. */
  const calls: string[] = [];
  /** Uncaught exceptions in the page: none is acceptable. */
  const pageErrors: string[] = [];
  /** The API as the bootstrap admin (setup and checks); the page signs in on its own. */
  const transport = () =>
    createConnectTransport({ baseUrl: base, httpVersion: "1.1", nodeOptions: { ca }, interceptors: [asAdmin(etcd.caFile)] });
  const get = (path: string, headers?: Record<string, string>) => httpsRequest(port, ca, path, headers ? { headers } : {});
  const instancesApi = () => createClient(InstanceService, transport());

  const row = (name: string) => page.locator(`[data-testid="instance-row"][data-name="${name}"]`);
  const rowState = (name: string, state: string) => row(name).locator(`[data-testid="instance-state"] [data-state="${state}"]`);

  before(async () => {
    if (!existsSync(APP_INDEX)) throw new Error(`${APP_INDEX} is missing: build the UI first (npx vite build, or make build)`);
    dir = await mkdtemp(join(tmpdir(), "hv-e2e-ui-"));
    etcd = await startSecureEtcd(join(dir, "server", "pki"));
    ca = await readFile(etcd.caFile, "utf8");
    port = await freePort();
    base = `https://127.0.0.1:${port}`;
    server = new Proc("server", [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      "--listen",
      `127.0.0.1:${port}`,
      "--data-dir",
      join(dir, "server"),
    ]);
    await server.waitFor(/server listening/);
    const token = await joinToken(ctlFor(base, etcd.caFile), 1);
    agent = new Proc("agent", [
      binPath("hypervisor-agent"),
      "--node-name",
      "ui-node",
      "--etcd-endpoints",
      etcd.etcd.endpoint,
      "--heartbeat-ttl",
      "3",
      "--drivers",
      "mock",
      "--data-dir",
      join(dir, "agent"),
      "--label",
      "zone=test",
      "--capacity-vcpus",
      "8",
      "--capacity-memory-mib",
      "8192",
      ...joinArgs(base, token),
    ]);
    const nodes = createClient(NodeService, transport());
    await until("node ui-node Ready", async () =>
      (await nodes.listNodes({})).nodes.some((n) => n.name === "ui-node" && n.condition === NodeCondition.READY),
    );
    // Company for the screenshots, created outside the UI (the list must show them too).
    const api = instancesApi();
    for (const [name, app] of [
      ["web-1", "web"],
      ["web-2", "web"],
      ["db-1", "db"],
    ] as const)
      await api.createInstance({ name, labels: { app }, spec: { driver: "mock", vcpus: 1, memoryMib: 256n } });

    browser = await launchBrowser({ trustServerCert: join(etcd.pkiDir, "server.crt") });
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.on("request", (r) => {
      const m = /\/hypervisor\.v1\.\w+\/(\w+)$/.exec(new URL(r.url()).pathname);
      if (m) calls.push(m[1]!);
    });
  });

  afterEach(() => {
    assert.deepEqual(pageErrors.splice(0), [], "uncaught errors in the page");
  });

  after(async () => {
    await browser?.close().catch(() => undefined);
    await agent?.stop();
    await server?.stop();
    await etcd?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("serves the app, its hashed assets, the SPA fallback and the desktop page next to the API", async () => {
    const index = await get("/");
    assert.equal(index.status, 200);
    assert.match(index.headers["content-type"] ?? "", /^text\/html/);
    assert.equal(index.headers["cache-control"], "no-cache");
    const html = index.body;
    const deep = await get("/instances/anything");
    assert.equal(deep.body, html, "an app route gets the app's index.html");

    const asset = /src="(\/assets\/[^"]+\.js)"/.exec(html)?.[1];
    assert.ok(asset, "index.html loads a script from /assets/");
    const js = await get(asset);
    assert.equal(js.status, 200);
    assert.match(js.headers["content-type"] ?? "", /^text\/javascript/);
    assert.match(js.headers["cache-control"] ?? "", /immutable/);
    const again = await get(asset, { "if-none-match": js.headers.etag ?? "" });
    assert.equal(again.status, 304);

    assert.equal((await get("/assets/missing-0123abcd.js")).status, 404, "a missing asset is not answered with HTML");
    const traversal = await get("/../../../../etc/passwd");
    assert.equal(traversal.status, 404);
    assert.doesNotMatch(traversal.body, /root:/);
    assert.equal((await get("/%2e%2e/%2e%2e/etc/passwd")).status, 404);

    const desktop = await get("/desktop/");
    assert.equal(desktop.status, 200);
    assert.notEqual(desktop.body, html, "/desktop/ is the desktop page, not the app");

    // The API, /healthz and unknown RPCs are not swallowed by the fallback.
    assert.equal((await get("/healthz")).status, 200);
    const unknownRpc = await httpsRequest(port, ca, "/hypervisor.v1.InstanceService/NoSuchMethod", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    assert.equal(unknownRpc.status, 404);
    assert.equal((await instancesApi().listInstances({})).instances.length, 3);
  });

  it("trusts this server's key in the browser and no other, even one from the same CA", async () => {
    // The page itself loads over https (no certificate error), as every other test here relies on.
    const page = await browser.newPage();
    try {
      const answer = await page.goto(`${base}/healthz`);
      assert.equal(answer?.status(), 200);
      // Another key, certified by the same cluster CA for the same address: still refused, since
      // the browser was told to accept one public key, not the CA nor every certificate.
      const other = await issueServerCertificate(await loadOrCreateCa(etcd.pkiDir), {
        name: "impostor",
        dnsNames: ["localhost"],
        ipAddresses: ["127.0.0.1"],
        ttlSeconds: 3600,
      });
      const impostor = createServer({ key: other.keyPem, cert: other.certPem }, (_req, res) => res.end("impostor"));
      await new Promise<void>((resolve) => impostor.listen(0, "127.0.0.1", resolve));
      try {
        const { port: otherPort } = impostor.address() as AddressInfo;
        await assert.rejects(page.goto(`https://127.0.0.1:${otherPort}/`), /net::ERR_CERT_AUTHORITY_INVALID/);
      } finally {
        impostor.close();
      }
    } finally {
      await page.close();
    }
  });

  it("creates an instance through the form; it appears and reaches Running without a reload", async () => {
    await page.goto(`${base}/instances`);
    // Signed out, every URL shows the sign-in page; signed in, the page asked for.
    await page.locator('[data-testid="signin-page"]').waitFor();
    await signIn(page, adminToken(etcd.caFile));
    assert.match(await page.locator('[data-testid="session-user"]').innerText(), /^admin\s+admin$/);
    await row("web-1").waitFor();
    await page.locator('[data-testid="instances-loading"]').waitFor({ state: "detached" });
    await page.evaluate("window.__samePage = true");

    await page.click('[data-testid="create-instance"]');
    await page.locator('[data-testid="create-dialog"][open]').waitFor();
    assert.equal(await page.locator('[data-testid="create-driver"]').evaluate((el) => (el as unknown as { value: string }).value), "mock");
    await page.locator('[data-testid="create-name"] input').fill("ui-web");
    await page.locator('[data-testid="create-vcpus"] input').fill("2");
    await page.locator('[data-testid="create-memory"] input').fill("128");
    await page.locator('[data-testid="create-labels"] input').fill("app=ui, tier=front");
    await page.click('[data-testid="create-submit"]');

    await row("ui-web").waitFor();
    await rowState("ui-web", "Running").waitFor();
    assert.equal(await page.evaluate("window.__samePage"), true, "the page was not reloaded");
    assert.equal(calls.filter((c) => c === "WatchInstances").length, 1, "one live stream");
    assert.equal(calls.filter((c) => c === "ListInstances" || c === "GetInstance").length, 0, "no polling for instances");

    const created = (await instancesApi().getInstance({ name: "ui-web" })).instance!;
    assert.equal(created.spec?.vcpus, 2);
    assert.equal(created.spec?.memoryMib, 128n);
    assert.deepEqual(created.labels, { app: "ui", tier: "front" });

    // Created elsewhere while the page is open: it shows up; deleted elsewhere: it goes.
    await instancesApi().createInstance({ name: "api-made", spec: { driver: "mock", vcpus: 1, memoryMib: 64n } });
    await rowState("api-made", "Running").waitFor();
    await instancesApi().deleteInstance({ name: "api-made" });
    await row("api-made").waitFor({ state: "detached" });
    await screenshot(page, "instances");
  });

  it("shows spec, status and 'no console log' on the detail page of a mock instance", async () => {
    await row("ui-web").locator("a").click();
    await page.locator('[data-testid="instance-page"][data-name="ui-web"]').waitFor();
    const spec = await page.locator('[data-testid="instance-spec"]').innerText();
    assert.match(spec, /mock/);
    assert.match(spec, /128 MiB/);
    assert.match(await page.locator('[data-testid="instance-status"]').innerText(), /ui-node/);
    await page.click('[data-testid="tab-logs"]');
    const none = page.locator('[data-testid="log-none"]');
    await none.waitFor();
    assert.match(await none.innerText(), /No console log/);
    assert.match(await none.innerText(), /mock keeps no console log/);
    await page.click('[data-testid="tab-console"]');
    await page.locator('[data-testid="console-none"]').waitFor();
    await page.click('[data-testid="back"]');
    await row("ui-web").waitFor();
  });

  it("stops from the list and deletes from the detail page; the list follows", async () => {
    await row("ui-web").locator('[data-testid="action-stop"]').click();
    await rowState("ui-web", "Stopped").waitFor();
    assert.equal(await row("ui-web").locator('[data-testid="action-start"]').isDisabled(), false, "a stopped instance can be started");

    await row("ui-web").locator("a").click();
    await page.locator('[data-testid="instance-page"][data-name="ui-web"]').waitFor();
    await page.click('[data-testid="action-delete"]');
    await page.locator('[data-testid="confirm-dialog"][open]').waitFor();
    await page.click('[data-testid="confirm-ok"]');
    await page.locator('[data-testid="instances-page"]').waitFor();
    await row("ui-web").waitFor({ state: "detached" });
    await until("ui-web gone from the API", async () => {
      try {
        await instancesApi().getInstance({ name: "ui-web" });
        return false;
      } catch (e) {
        return ConnectError.from(e).code === Code.NotFound;
      }
    });
    assert.equal(await page.evaluate("window.__samePage"), true, "still the same page");
  });

  /**
   * Picks a driver in the create dialog's select. A click that lands while the select's menu is
   * still closing from the last pick leaves it closed (seen under load): open it again then.
   */
  const chooseDriver = async (driver: string) => {
    const item = page.locator(`[data-testid="driver-${driver}"]`);
    for (let attempt = 1; ; attempt++) {
      await page.click('[data-testid="create-driver"]');
      try {
        await item.waitFor({ state: "visible", timeout: 5_000 });
        break;
      } catch (e) {
        if (attempt === 3) throw e;
      }
    }
    await item.click();
    const select = page.locator('[data-testid="create-driver"]');
    await until(
      `driver ${driver} chosen`,
      async () => (await select.evaluate((el) => (el as unknown as { value: string }).value)) === driver,
    );
  };

  it("puts the client's and the server's form errors under the field they are about", async () => {
    const creates = () => calls.filter((c) => c === "CreateInstance").length;
    await page.click('[data-testid="create-instance"]');
    await page.locator('[data-testid="create-dialog"][open]').waitFor();
    const name = page.locator('[data-testid="create-name"]');
    const labels = page.locator('[data-testid="create-labels"]');

    // Client side: caught before anything is sent, in the server's words.
    const before = creates();
    await name.locator("input").fill("Bad_Name");
    await page.click('[data-testid="create-submit"]');
    const nameError = name.locator('[part="error"]');
    await nameError.waitFor();
    assert.match(await nameError.innerText(), /^name: "Bad_Name" is not a valid name/);
    assert.equal(creates(), before, "nothing sent");

    // Client side, from the driver registry: a container needs an image, and a container form
    // has no kernel to set (the drivers and what each takes come from ListDrivers).
    await chooseDriver("containerd");
    await page.locator('[data-testid="create-command"]').waitFor();
    assert.equal(await page.locator('[data-testid="create-kernel"]').count(), 0);
    await name.locator("input").fill("ui-box");
    await page.click('[data-testid="create-submit"]');
    const imageError = page.locator('[data-testid="create-image"] [part="error"]');
    await imageError.waitFor();
    assert.equal(await imageError.innerText(), "spec.image: is required for the containerd driver");
    assert.equal(creates(), before, "nothing sent");
    await chooseDriver("mock");
    await page.locator('[data-testid="create-command"]').waitFor({ state: "detached" });

    // Server side, with a field prefix: reserved label keys are the server's policy.
    const expected = await instancesApi()
      .createInstance({ name: "ui-reserved", labels: { "hypervisor.io/owner": "me" }, spec: { driver: "mock", vcpus: 1, memoryMib: 64n } })
      .then(
        () => assert.fail("the server accepted a reserved label key"),
        (e: unknown) => ConnectError.from(e).rawMessage,
      );
    assert.match(expected, /^labels\["hypervisor.io\/owner"\]: /);
    await name.locator("input").fill("ui-reserved");
    await labels.locator("input").fill("hypervisor.io/owner=me");
    await page.click('[data-testid="create-submit"]');
    const labelError = labels.locator('[part="error"]');
    await labelError.waitFor();
    assert.equal(await labelError.innerText(), expected);
    assert.equal(creates(), before + 1, "this one was the server's to refuse");
    assert.equal(await nameError.count(), 0, "the name is fine now");

    // Server side, AlreadyExists: about the name.
    await labels.locator("input").fill("");
    await name.locator("input").fill("web-1");
    await page.click('[data-testid="create-submit"]');
    await nameError.waitFor();
    assert.equal(await nameError.innerText(), 'instance "web-1" already exists');
    assert.equal(await page.locator('[data-testid="create-dialog"][open]').count(), 1, "the dialog stays open to fix the form");

    await page.click('[data-testid="create-cancel"]');
    await page.locator('[data-testid="create-dialog"][open]').waitFor({ state: "detached" });
    await assert.rejects(instancesApi().getInstance({ name: "ui-reserved" }), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
  });

  it("shows health, nodes, instances by phase, capacity and recent events on the dashboard", async () => {
    await page.click('[data-testid="nav-dashboard"]');
    await page.locator('[data-testid="dashboard-page"]').waitFor();
    await page.locator('[data-testid="health-state"]', { hasText: "Healthy" }).waitFor();
    assert.equal(await page.locator('[data-testid="nodes-ready"]').innerText(), "1");
    assert.equal(await page.locator('[data-testid="instances-total"]').innerText(), "3");
    assert.match(await page.locator('[data-testid="phase-Running"]').innerText(), /3 Running/);
    // 3 instances × 1 vCPU out of 8, 3 × 256 MiB out of 8 GiB, once ui-web's reservation is released.
    const capacity = page.locator('[data-testid="dashboard-capacity"]');
    await capacity.filter({ hasText: "3 vCPU / 8 vCPU" }).waitFor();
    assert.match(await capacity.innerText(), /768 MiB \/ 8 GiB/);
    const events = await page.locator('[data-testid="dashboard-events"]').innerText();
    assert.match(events, /ui-web\s+deleted/);
    assert.match(events, /ui-web\s+is Stopped/);

    // Snackbars close by themselves: wait, so that the screenshot shows the page.
    // A function, not a string: the page's CSP forbids eval, and a string would be eval'd there.
    await page.waitForFunction(
      () =>
        (globalThis as unknown as { document: { querySelectorAll(s: string): { length: number } } }).document.querySelectorAll(
          "mdui-snackbar",
        ).length === 0,
    );
    await screenshot(page, "dashboard");

    // The theme toggles between light and dark, and back.
    const theme = async () => String(await page.evaluate("document.documentElement.className")).match(/mdui-theme-(light|dark)/)?.[1];
    const first = await theme();
    assert.ok(first, "a theme class on <html>");
    await page.click('[data-testid="theme-toggle"]');
    assert.equal(await theme(), first === "light" ? "dark" : "light");
    await page.click('[data-testid="theme-toggle"]');
    assert.equal(await theme(), first);
  });

  it("cordons and uncordons a node after confirmation", async () => {
    const nodes = createClient(NodeService, transport());
    await page.click('[data-testid="nav-nodes"]');
    const node = page.locator('[data-testid="node-row"][data-name="ui-node"]');
    await node.locator('[data-testid="driver-mock"][data-healthy="true"]').waitFor();

    await node.locator('[data-testid="node-cordon"]').click();
    await page.locator('[data-testid="confirm-dialog"][open]').waitFor();
    await page.click('[data-testid="confirm-ok"]');
    await node.locator('[data-testid="node-cordoned"]').waitFor();
    assert.equal((await nodes.getNode({ name: "ui-node" })).node?.cordoned, true);

    await node.locator('[data-testid="node-uncordon"]').click();
    await page.locator('[data-testid="confirm-dialog"][open]').waitFor();
    await page.click('[data-testid="confirm-ok"]');
    await node.locator('[data-testid="node-cordoned"]').waitFor({ state: "detached" });
    assert.equal((await nodes.getNode({ name: "ui-node" })).node?.cordoned, false);
  });

  it("moves a node's instances away after confirmation; uncordon ends the drain", async () => {
    const nodes = createClient(NodeService, transport());
    const instances = instancesApi();
    const node = page.locator('[data-testid="node-row"][data-name="ui-node"]');
    await node.locator('[data-testid="node-move"]').click();
    await page.locator('[data-testid="confirm-dialog"][open]').waitFor();
    await page.click('[data-testid="confirm-ok"]');
    await node.locator('[data-testid="node-draining"]').waitFor();
    // The drain may already have finished (db-1 left at once): the node stays cordoned either way.
    assert.equal((await nodes.getNode({ name: "ui-node" })).node?.cordoned, true);
    // The only node is draining: db-1 leaves it and waits, Pending, for a place to go.
    const pending = await until(
      "db-1 off the draining node",
      async () => {
        const i = (await instances.getInstance({ name: "db-1" })).instance!;
        return i.status?.phase === Phase.PENDING && !i.status.node ? i : undefined;
      },
      30_000,
    );
    assert.ok(pending.status?.message, "a Pending instance says why");

    await node.locator('[data-testid="node-uncordon"]').click();
    await page.locator('[data-testid="confirm-dialog"][open]').waitFor();
    await page.click('[data-testid="confirm-ok"]');
    await node.locator('[data-testid="node-draining"]').waitFor({ state: "detached" });
    const back = await until(
      "db-1 Running again",
      async () => {
        const i = (await instances.getInstance({ name: "db-1" })).instance!;
        return i.status?.phase === Phase.RUNNING ? i : undefined;
      },
      30_000,
    );
    assert.equal(back.status?.node, "ui-node");
  });

  it("lists an orphan on its node's page and adopts it back after confirmation", async () => {
    const instances = instancesApi();
    const nodes = createClient(NodeService, transport());
    await instances.createInstance({
      name: "kept-1",
      spec: { driver: "mock", vcpus: 1, memoryMib: 64n, driverConfig: { local_disk: "true" } },
    });
    const before = await until(
      "kept-1 Running",
      async () => {
        const i = (await instances.getInstance({ name: "kept-1" })).instance!;
        return i.status?.phase === Phase.RUNNING ? i : undefined;
      },
      30_000,
    );
    // A store restored from a backup older than kept-1: its agent keeps it and reports it.
    const store = await etcd.openAsServer();
    try {
      for (const k of [
        keys.instance("default/kept-1"),
        keys.assignment("ui-node", "default/kept-1"),
        keys.status("ui-node", "default/kept-1"),
      ])
        await store.delete(k);
    } finally {
      await store.close();
    }
    await until("the orphan reported", async () => (await nodes.listOrphans({ node: "ui-node" })).orphans.some((o) => o.name === "kept-1"));
    await page.goto(`${base}/nodes/ui-node`);
    const row = page.locator('[data-testid="orphan-row-kept-1"]');
    await row.waitFor();
    assert.match(await row.innerText(), /mock[\s\S]*running[\s\S]*Unknown[\s\S]*local/);
    await page.click('[data-testid="orphan-adopt-kept-1"]');
    await page.locator('[data-testid="confirm-dialog"][open]').waitFor();
    await page.click('[data-testid="confirm-ok"]');
    await row.waitFor({ state: "detached" });
    const back = await until(
      "kept-1 Running again",
      async () => {
        const i = (await instances.getInstance({ name: "kept-1" })).instance;
        return i?.status?.phase === Phase.RUNNING ? i : undefined;
      },
      30_000,
    );
    assert.equal(back.uid, before.uid, "the same instance, adopted as it was");
    await instances.deleteInstance({ name: "kept-1" });
  });

  it("renders the instance list in a 400 px wide window", async () => {
    const narrow = await browser.newPage({ viewport: { width: 400, height: 800 } });
    try {
      await narrow.goto(`${base}/instances`);
      await signIn(narrow, adminToken(etcd.caFile)); // a new browser context: a new session
      const first = narrow.locator('[data-testid="instance-row"][data-name="db-1"]');
      await first.waitFor();
      await first.locator('[data-state="Running"]').waitFor();
      // The navigation is a bottom bar, not a rail; nothing is wider than the window.
      assert.equal(await narrow.locator('mdui-navigation-bar[data-testid="nav"]').count(), 1);
      assert.equal(await narrow.locator("mdui-navigation-rail").count(), 0);
      const box = await first.boundingBox();
      assert.ok(box && box.x >= 0 && box.x + box.width <= 400, `row inside the window: ${JSON.stringify(box)}`);
      assert.ok(Number(await narrow.evaluate("document.documentElement.scrollWidth")) <= 400, "no horizontal scrolling");
      const toggle = await narrow.locator('[data-testid="theme-toggle"]').boundingBox();
      assert.ok(toggle && toggle.x + toggle.width <= 400, `the top bar's last button inside the window: ${JSON.stringify(toggle)}`);
      assert.equal(await narrow.locator('[data-testid="instance-row"]').count(), 3);
      await screenshot(narrow, "instances-narrow");
    } finally {
      await narrow.close();
    }
  });

  it("explains on the instance page why a Pending instance is not placed, node by node", async () => {
    const instances = instancesApi();
    await instances.createInstance({
      name: "ui-nowhere",
      spec: { driver: "mock", vcpus: 1, memoryMib: 64n, nodeSelector: { zone: "nowhere" } },
    });
    try {
      await page.goto(`${base}/instances/ui-nowhere`);
      const row = page.locator('[data-testid="explain-row"][data-node="ui-node"]');
      await row.waitFor();
      assert.equal(await row.getAttribute("data-feasible"), "false");
      assert.match((await row.textContent()) ?? "", /node selector mismatch/);
      assert.equal(
        (await page.locator('[data-testid="explain-summary"]').textContent())?.trim(),
        "0/1 nodes available: 1 node selector mismatch",
      );
      await screenshot(page, "instance-explain");
    } finally {
      await instances.deleteInstance({ name: "ui-nowhere" });
    }
  });
  it("creates several alike with a count, all or none, and refuses a bad count before sending", async () => {
    await page.goto(`${base}/instances`);
    await page.locator('[data-testid="instances-loading"]').waitFor({ state: "detached" });
    const batches = () => calls.filter((c) => c === "CreateInstances").length;
    await page.click('[data-testid="create-instance"]');
    await page.locator('[data-testid="create-dialog"][open]').waitFor();
    const name = page.locator('[data-testid="create-name"]');
    const count = page.locator('[data-testid="create-count"]');

    await name.locator("input").fill("ui-pool");
    await count.locator("input").fill("101");
    await page.click('[data-testid="create-submit"]');
    await count.locator('[part="error"]').waitFor();
    assert.equal(await count.locator('[part="error"]').innerText(), "count: expected 1 to 100");
    assert.equal(batches(), 0, "nothing sent");

    // The server's refusal of one of the batch goes under the field it is about.
    const labels = page.locator('[data-testid="create-labels"]');
    await count.locator("input").fill("2");
    await labels.locator("input").fill("hypervisor.io/owner=me");
    await page.click('[data-testid="create-submit"]');
    await labels.locator('[part="error"]').waitFor();
    assert.match(await labels.locator('[part="error"]').innerText(), /^instances\[0\]\.labels\["hypervisor\.io\/owner"\]: /);
    assert.equal(batches(), 1);
    await labels.locator("input").fill("");

    // web-2 exists: the whole batch is refused, under the name, and none of it is created.
    await name.locator("input").fill("web");
    await count.locator("input").fill("3");
    await page.click('[data-testid="create-submit"]');
    const nameError = name.locator('[part="error"]');
    await nameError.waitFor();
    assert.match(
      await nameError.innerText(),
      /^instances\[0\]\.name: instance "web-1" already exists \(and 1 more of the 3\); none of the 3 was created$/,
    );
    await assert.rejects(instancesApi().getInstance({ name: "web-3" }), (e: unknown) => ConnectError.from(e).code === Code.NotFound);

    await name.locator("input").fill("ui-pool");
    await page.click('[data-testid="create-submit"]');
    await page.locator('[data-testid="create-dialog"][open]').waitFor({ state: "detached" });
    for (const n of ["ui-pool-1", "ui-pool-2", "ui-pool-3"]) await rowState(n, "Running").waitFor();
    assert.equal(batches(), 3, "one call per batch sent");
    const made = await Promise.all(["ui-pool-1", "ui-pool-2", "ui-pool-3"].map((n) => instancesApi().getInstance({ name: n })));
    assert.deepEqual(
      made.map((r) => [r.instance?.spec?.driver, r.instance?.spec?.vcpus, r.instance?.spec?.memoryMib]),
      Array.from({ length: 3 }, () => ["mock", 1, 256n]),
    );
  });

  it("a viewer sees the instances, create and power disabled with the reason and no delete; a revoked token signs it out", async () => {
    const access = createClient(AccessService, transport());
    const { token, apiToken } = await access.createToken({ user: "vic", roles: ["viewer"], ttlSeconds: 3600, description: "ui test" });
    const viewer = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const errors: string[] = [];
    viewer.on("pageerror", (e) => errors.push(e.message));
    try {
      await viewer.goto(`${base}/instances`);
      await viewer.locator('[data-testid="signin-page"]').waitFor();
      await signIn(viewer, token);
      assert.match(await viewer.locator('[data-testid="session-user"]').innerText(), /^vic\s+viewer$/);

      // Reading is allowed: the list comes from the live stream as for the admin.
      const web1 = viewer.locator('[data-testid="instance-row"][data-name="web-1"]');
      await web1.locator('[data-state="Running"]').waitFor();
      await until(
        "every instance listed",
        async () =>
          (await viewer.locator('[data-testid="instance-row"]').count()) === (await instancesApi().listInstances({})).instances.length,
      );

      // Changing is not: each action is disabled and says which right it needs in the instance's
      // project; delete, which cannot be undone, is not offered at all.
      const create = viewer.locator('[data-testid="create-instance"]');
      assert.equal(await disabled(create), true, "create is disabled for a viewer");
      assert.equal(await create.getAttribute("title"), "needs instances:create in default (your roles: viewer)");
      const stop = web1.locator('[data-testid="action-stop"]');
      assert.equal(await disabled(stop), true, "stop is disabled for a viewer");
      assert.equal(await stop.getAttribute("title"), "needs instances:power in default (your roles: viewer)");
      assert.equal(await web1.locator('[data-testid="action-delete"]').count(), 0, "no delete for a viewer");
      await screenshot(viewer, "instances-viewer");

      // The detail page: the same on its buttons; its logs tab says why instead of asking.
      await web1.locator("a").click();
      await viewer.locator('[data-testid="instance-page"][data-name="web-1"]').waitFor();
      const detailStop = viewer.locator('[data-testid="instance-page"] [data-testid="action-stop"]');
      assert.equal(await disabled(detailStop), true);
      assert.equal(await detailStop.getAttribute("title"), "needs instances:power in default (your roles: viewer)");
      assert.equal(await viewer.locator('[data-testid="instance-page"] [data-testid="action-delete"]').count(), 0);
      await viewer.click('[data-testid="tab-logs"]');
      assert.equal(
        (await viewer.locator('[data-testid="logs-denied"] span').innerText()).trim(),
        "needs instances:logs in default (your roles: viewer)",
      );

      // Nodes: cordon and drain are an operator's.
      await viewer.click('[data-testid="nav-nodes"]');
      const cordon = viewer.locator('[data-testid="node-row"][data-name="ui-node"] [data-testid="node-cordon"]');
      await cordon.waitFor();
      assert.equal(await disabled(cordon), true);
      assert.equal(await cordon.getAttribute("title"), "needs nodes:cordon (your roles: viewer)");

      // Revoked while signed in: the next call (the nodes page refreshes) is refused, and the tab
      // is back on the sign-in page with the server's words.
      await access.revokeToken({ id: apiToken!.id });
      const refusal = viewer.locator('[data-testid="signin-error"]');
      await refusal.waitFor({ timeout: 30_000 });
      assert.equal((await refusal.innerText()).trim(), `token ${apiToken!.id}: revoked`);
      assert.equal(await storedTokens(viewer), 0, "the refused token is forgotten");
    } finally {
      await viewer.close();
    }
    assert.deepEqual(errors, [], "uncaught errors in the viewer's page");
  });

  it("refuses a bad token on the sign-in page in the server's words, and signs out", async () => {
    const other = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    try {
      // What the server says of this token, asked directly.
      const bad = "hvt_aaaaaaaaaa.not-a-secret-of-this-cluster";
      const expected = await createClient(AccessService, createConnectTransport({ baseUrl: base, httpVersion: "1.1", nodeOptions: { ca } }))
        .whoAmI({}, { headers: { authorization: `Bearer ${bad}` } })
        .then(
          () => assert.fail("the server accepted a made-up token"),
          (e: unknown) => ConnectError.from(e),
        );
      assert.equal(expected.code, Code.Unauthenticated);

      await other.goto(`${base}/`);
      await other.locator('[data-testid="signin-token"] input').fill(bad);
      await other.click('[data-testid="signin-submit"]');
      const refusal = other.locator('[data-testid="signin-error"]');
      await refusal.waitFor();
      assert.equal((await refusal.innerText()).trim(), expected.rawMessage);
      assert.equal(await other.locator('[data-testid="session-user"]').count(), 0, "not signed in");
      assert.equal(await storedTokens(other), 0, "a refused token is not kept");
      await screenshot(other, "signin-refused");

      // The admin's token works; reload keeps the tab signed in (sessionStorage); logout ends it.
      await signIn(other, adminToken(etcd.caFile));
      await other.reload();
      await other.locator('[data-testid="session-user"]', { hasText: "admin" }).waitFor();
      await other.click('[data-testid="logout"]');
      await other.locator('[data-testid="signin-page"]').waitFor();
      assert.equal(await other.locator('[data-testid="signin-error"]').count(), 0, "a logout is no error");
      assert.equal(await storedTokens(other), 0);
    } finally {
      await other.close();
    }
  });
});
