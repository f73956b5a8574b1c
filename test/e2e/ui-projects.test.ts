// Projects in the management UI, in a real browser against the real system: etcd on TLS, an https
// hypervisor-server that also takes OIDC logins from an in-process provider, one
// hypervisor-agent with the mock driver, and Debian's Chromium. The admin makes projects web and
// ci with instances in each (and one in default), and people sign in as they would:
//
//   an operator token scoped to web ─► sees web only (rows, switcher), a ci instance's URL shows
//     a permission error and no actions, deletes in web, a quota refusal shows at the form
//   the admin ─► "All projects": both, a Project column, delete on both; ?project=ci opens ci
//   an OIDC user whose group is a viewer in web ─► signs in at the provider's pages, the header
//     names the user and group, the page shows web's instances
import { after, afterEach, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { Browser, Locator, Page } from "playwright-core";
import { AccessService } from "../../api/gen/hypervisor/v1/access_pb.js";
import { InstanceService, Phase } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeCondition, NodeService } from "../../api/gen/hypervisor/v1/node_pb.js";
import { ProjectService } from "../../api/gen/hypervisor/v1/project_pb.js";
import { launchBrowser, screenshot, signIn } from "../support/browser.js";
import { adminToken, asAdmin, ctlFor, joinArgs, joinToken, startSecureEtcd, type SecureEtcd } from "../support/cluster.js";
import { startOidcProvider, type TestOidcProvider } from "../support/oidc-provider.js";
import { binPath, freePort, Proc, repoRoot, until } from "../support/procs.js";

const APP_INDEX = join(repoRoot, "dist/ui/control_and_manage_plane/index.html");

/** Whether an MDUI button is disabled (its property; MDUI keeps aria in its shadow DOM). */
const disabled = (button: Locator) => button.evaluate((el) => (el as unknown as { disabled?: boolean }).disabled === true);

describe("projects in the management UI (etcd, server with OIDC, mock agent, Chromium)", { timeout: 300_000 }, () => {
  let dir: string;
  let etcd: SecureEtcd;
  let ca: string;
  let base: string;
  let server: Proc;
  let agent: Proc;
  let provider: TestOidcProvider;
  let browser: Browser;
  /** The operator of web's token. */
  let webToken: string;
  const pageErrors: string[] = [];

  const transport = () =>
    createConnectTransport({ baseUrl: base, httpVersion: "1.1", nodeOptions: { ca }, interceptors: [asAdmin(etcd.caFile)] });
  const instancesApi = () => createClient(InstanceService, transport());
  const projectsApi = () => createClient(ProjectService, transport());

  const row = (page: Page, project: string, name: string) =>
    page.locator(`[data-testid="instance-row"][data-project="${project}"][data-name="${name}"]`);
  /** The rows shown, as project/name, sorted. */
  const rows = async (page: Page) =>
    (
      await page.locator('[data-testid="instance-row"]').evaluateAll((els) =>
        els.map((e) => {
          // This project's Node tsconfig has no DOM types.
          const el = e as unknown as { getAttribute(name: string): string | null };
          return `${el.getAttribute("data-project")}/${el.getAttribute("data-name")}`;
        }),
      )
    ).sort();
  /** The projects the switcher offers (its menu items' values). */
  const offered = (page: Page) =>
    page
      .locator('[data-testid="project-switcher"] mdui-menu-item')
      .evaluateAll((els) => els.map((e) => (e as unknown as { value: string }).value));
  const queryProject = (page: Page) => new URL(page.url()).searchParams.get("project");

  async function newPage(): Promise<Page> {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.on("pageerror", (e) => pageErrors.push(e.message));
    return page;
  }

  /** Picks an item of an MDUI select; a click while its menu is still closing is tried again. */
  async function choose(page: Page, select: string, item: string): Promise<void> {
    const option = page.locator(`[data-testid="${item}"]`);
    for (let attempt = 1; ; attempt++) {
      await page.click(`[data-testid="${select}"]`);
      try {
        await option.waitFor({ state: "visible", timeout: 5_000 });
        break;
      } catch (e) {
        if (attempt === 3) throw e;
      }
    }
    await option.click();
  }

  async function running(project: string, name: string): Promise<void> {
    await until(
      `${project}/${name} Running`,
      async () => (await instancesApi().getInstance({ project, name })).instance?.status?.phase === Phase.RUNNING,
      30_000,
    );
  }

  async function gone(project: string, name: string): Promise<void> {
    await until(`${project}/${name} gone from the API`, async () => {
      try {
        await instancesApi().getInstance({ project, name });
        return false;
      } catch (e) {
        return ConnectError.from(e).code === Code.NotFound;
      }
    });
  }

  before(async () => {
    if (!existsSync(APP_INDEX)) throw new Error(`${APP_INDEX} is missing: build the UI first (npx vite build, or make build)`);
    dir = await mkdtemp(join(tmpdir(), "hv-e2e-ui-projects-"));
    etcd = await startSecureEtcd(join(dir, "server", "pki"));
    ca = await readFile(etcd.caFile, "utf8");
    const port = await freePort();
    base = `https://127.0.0.1:${port}`;
    // The provider sends the browser back to the UI's callback; the server names it as its issuer
    // (GetAuthConfig for the UI, its CSP's connect-src) and takes its ID tokens.
    provider = await startOidcProvider({
      accounts: { olga: { preferred_username: "olga", groups: ["devs"] } },
      redirectUris: [`${base}/auth/callback`],
    });
    server = new Proc("server", [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      ...["--listen", `127.0.0.1:${port}`, "--data-dir", join(dir, "server")],
      ...["--oidc-issuer", provider.issuer, "--oidc-client-id", provider.clientId, "--oidc-scopes", "openid,profile,groups"],
    ]);
    await server.waitFor(/server listening/);
    const token = await joinToken(ctlFor(base, etcd.caFile), 1);
    agent = new Proc("agent", [
      binPath("hypervisor-agent"),
      ...["--node-name", "ui-node", "--etcd-endpoints", etcd.etcd.endpoint, "--heartbeat-ttl", "3", "--drivers", "mock"],
      ...["--data-dir", join(dir, "agent"), "--capacity-vcpus", "16", "--capacity-memory-mib", "16384"],
      ...joinArgs(base, token),
    ]);
    const nodes = createClient(NodeService, transport());
    await until("node ui-node Ready", async () =>
      (await nodes.listNodes({})).nodes.some((n) => n.name === "ui-node" && n.condition === NodeCondition.READY),
    );

    for (const name of ["web", "ci"]) await projectsApi().createProject({ name });
    const spec = { driver: "mock", vcpus: 1, memoryMib: 64n };
    for (const [project, name] of [
      ["web", "app-1"],
      ["web", "app-2"],
      ["ci", "build-1"],
      // The same name in two projects: two instances.
      ["ci", "app-1"],
      ["default", "def-1"],
    ] as const)
      await instancesApi().createInstance({ project, name, spec });
    for (const [project, name] of [
      ["web", "app-1"],
      ["ci", "build-1"],
    ])
      await running(project!, name!);

    const access = createClient(AccessService, transport());
    webToken = (await access.createToken({ user: "wendy", roles: ["operator"], project: "web", ttlSeconds: 3600 })).token;
    await access.createRoleBinding({ subject: "group:devs", role: "viewer", project: "web" });

    browser = await launchBrowser({ trustServerCert: join(etcd.pkiDir, "server.crt") });
  });

  afterEach(() => {
    assert.deepEqual(pageErrors.splice(0), [], "uncaught errors in the pages");
  });

  after(async () => {
    await browser?.close().catch(() => undefined);
    await agent?.stop();
    await server?.stop();
    await provider?.close().catch(() => undefined);
    await etcd?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("an operator of web sees web only, no actions on a ci instance, deletes in web; a quota refusal shows at the form", async () => {
    const page = await newPage();
    try {
      await page.goto(`${base}/instances`);
      await signIn(page, webToken);
      assert.match(await page.locator('[data-testid="session-user"]').innerText(), /^wendy\s+in web: operator$/);
      // The first project it has a role in (it may not see default), in the URL too.
      await page.locator('[data-testid="instance-row"]').first().waitFor();
      await page.locator('[data-testid="instances-loading"]').waitFor({ state: "detached" });
      assert.deepEqual(await rows(page), ["web/app-1", "web/app-2"]);
      assert.equal(queryProject(page), "web");
      assert.deepEqual(await offered(page), ["web"], "the switcher offers web alone, no All projects");
      assert.equal(await page.locator('[data-testid="column-project"]').count(), 0, "one project: no Project column");
      assert.equal(await page.locator('[data-testid="nav-audit"]').count(), 0, "no audit log for an operator");
      const create = page.locator('[data-testid="create-instance"]');
      assert.equal(await disabled(create), false, "an operator of web creates in web");

      // A ci instance's link: a permission error in the UI's words, nothing of the instance.
      await page.goto(`${base}/instances/ci/build-1`);
      const denied = page.locator('[data-testid="instance-denied"]');
      await denied.waitFor();
      assert.match(await denied.innerText(), /No access to project ci/);
      assert.match(await denied.innerText(), /needs instances:get in ci \(your roles: in web: operator\)/);
      assert.equal(await page.locator('[data-testid^="action-"]').count(), 0, "no actions on it");
      assert.equal(await page.locator('[data-testid="instance-spec"]').count(), 0, "nothing of it shown");
      // ... as the server says, asked directly with the same token.
      const refusal = await createClient(
        InstanceService,
        createConnectTransport({ baseUrl: base, httpVersion: "1.1", nodeOptions: { ca } }),
      )
        .getInstance({ project: "ci", name: "build-1" }, { headers: { authorization: `Bearer ${webToken}` } })
        .then(
          () => assert.fail("the server showed a ci instance to web's operator"),
          (e: unknown) => ConnectError.from(e),
        );
      assert.equal(refusal.code, Code.PermissionDenied);
      // A link to ?project=ci keeps the tab in web: the user may not pick ci.
      await page.goto(`${base}/instances?project=ci`);
      await row(page, "web", "app-1").waitFor();
      await until("the URL back on web", async () => queryProject(page) === "web");
      assert.deepEqual(await rows(page), ["web/app-1", "web/app-2"]);

      // Delete in web: offered, enabled, and it works.
      const del = row(page, "web", "app-2").locator('[data-testid="action-delete"]');
      assert.equal(await disabled(del), false);
      await del.click();
      await page.locator('[data-testid="confirm-dialog"][open]').waitFor();
      await page.click('[data-testid="confirm-ok"]');
      await row(page, "web", "app-2").waitFor({ state: "detached" });
      await gone("web", "app-2");
      await instancesApi().getInstance({ project: "ci", name: "app-1" }); // ci's app-1 untouched

      // A quota web is at: the create is refused, and the server's message shows at the form.
      await projectsApi().updateProject({ name: "web", quota: { instances: 1 }, updateMask: ["quota"] });
      const expected = await instancesApi()
        .createInstance({ project: "web", name: "app-3", spec: { driver: "mock", vcpus: 1, memoryMib: 64n } })
        .then(
          () => assert.fail("the server let web past its quota"),
          (e: unknown) => ConnectError.from(e),
        );
      assert.equal(expected.code, Code.ResourceExhausted);
      await create.click();
      await page.locator('[data-testid="create-dialog"][open]').waitFor();
      assert.equal(await page.locator('[data-testid="create-project"]').count(), 0, "one project: no project field");
      await page.locator('[data-testid="create-name"] input').fill("app-3");
      await page.click('[data-testid="create-submit"]');
      const formError = page.locator('[data-testid="create-error"]');
      await formError.waitFor();
      assert.equal((await formError.innerText()).trim(), expected.rawMessage);
      await page.click('[data-testid="create-cancel"]');
      await screenshot(page, "instances-project-operator");

      // The Projects page: web alone, its roles, its instances against the quota.
      await page.click('[data-testid="nav-projects"]');
      const web = page.locator('[data-testid="project-row"][data-name="web"]');
      await web.waitFor();
      assert.equal(await page.locator('[data-testid="project-row"]').count(), 1);
      assert.equal(await web.locator('[data-testid="project-roles"]').innerText(), "operator");
      // The list from sign-in shows first; the page's own ListProjects brings the quota.
      await web.locator('[data-testid="project-instances"]', { hasText: /^1 \/ 1 · 100%$/ }).waitFor();
      await projectsApi().updateProject({ name: "web", quota: {}, updateMask: ["quota"] });
    } finally {
      await page.close();
    }
  });

  it("the admin sees every project with All projects: a Project column, delete on both; ?project=ci opens ci", async () => {
    const page = await newPage();
    try {
      await page.goto(`${base}/instances`);
      await signIn(page, adminToken(etcd.caFile));
      await row(page, "default", "def-1").waitFor();
      assert.equal(queryProject(page), "default", "default, which the admin sees");
      assert.deepEqual(await rows(page), ["default/def-1"]);
      assert.deepEqual(await offered(page), ["*", "ci", "default", "web"]);

      await choose(page, "project-switcher", "project-option-all");
      await row(page, "ci", "build-1").waitFor();
      await until("every project's instances listed", async () => (await rows(page)).length === 4);
      assert.deepEqual(await rows(page), ["ci/app-1", "ci/build-1", "default/def-1", "web/app-1"]);
      assert.equal(queryProject(page), "*");
      await page.locator('[data-testid="column-project"]').waitFor();
      assert.equal(await row(page, "web", "app-1").locator('[data-testid="instance-project"]').innerText(), "web");
      for (const [project, name] of [
        ["web", "app-1"],
        ["ci", "build-1"],
      ] as const) {
        const del = row(page, project, name).locator('[data-testid="action-delete"]');
        assert.equal(await disabled(del), false, `delete offered on ${project}/${name}`);
      }
      await screenshot(page, "instances-all-projects");

      // The create form asks which project.
      await page.click('[data-testid="create-instance"]');
      await page.locator('[data-testid="create-dialog"][open]').waitFor();
      await page.locator('[data-testid="create-project"]').waitFor();
      assert.deepEqual(
        await page
          .locator('[data-testid="create-project"] mdui-menu-item')
          .evaluateAll((els) => els.map((e) => (e as unknown as { value: string }).value)),
        ["ci", "default", "web"],
      );
      await choose(page, "create-project", "create-project-ci");
      await page.locator('[data-testid="create-name"] input').fill("made-in-ci");
      await page.click('[data-testid="create-submit"]');
      await row(page, "ci", "made-in-ci").waitFor();
      assert.equal((await instancesApi().getInstance({ project: "ci", name: "made-in-ci" })).instance?.project, "ci");

      // Delete in ci from All projects; same-named ci/app-1 and web/app-1 stay apart.
      await row(page, "ci", "app-1").locator('[data-testid="action-delete"]').click();
      await page.locator('[data-testid="confirm-dialog"][open]').waitFor();
      await page.click('[data-testid="confirm-ok"]');
      await row(page, "ci", "app-1").waitFor({ state: "detached" });
      await gone("ci", "app-1");
      await instancesApi().getInstance({ project: "web", name: "app-1" });
      assert.equal(await row(page, "web", "app-1").count(), 1);

      // The detail page's URL names the project.
      await row(page, "ci", "build-1").locator("a").click();
      await page.locator('[data-testid="instance-page"][data-project="ci"][data-name="build-1"]').waitFor();
      assert.equal(new URL(page.url()).pathname, "/instances/ci/build-1");
      await page.locator('[data-testid="instance-page"] [data-testid="action-delete"]').waitFor();

      // A link with the project opens that view (the tab keeps its token; the link its project).
      await page.goto(`${base}/instances?project=ci`);
      await row(page, "ci", "build-1").waitFor();
      await until("ci's instances only", async () => (await rows(page)).join() === "ci/build-1,ci/made-in-ci");
      assert.equal(await page.locator('[data-testid="column-project"]').count(), 0);
      // The Projects page: every project; a name opens its instances.
      await page.click('[data-testid="nav-projects"]');
      await page.locator('[data-testid="project-row"][data-name="web"]').waitFor();
      assert.deepEqual(
        await page
          .locator('[data-testid="project-row"]')
          .evaluateAll((els) => els.map((e) => (e as unknown as { getAttribute(n: string): string | null }).getAttribute("data-name"))),
        ["ci", "default", "web"],
      );
      await screenshot(page, "projects");
      const ci = page.locator('[data-testid="project-row"][data-name="ci"]');
      await ci.locator('[data-testid="project-instances"]', { hasText: /^2 \(no limit\)$/ }).waitFor();
      await ci.locator("a").click();
      await row(page, "ci", "build-1").waitFor();
      assert.equal(queryProject(page), "ci");

      // An old link, from before projects: an instance of default.
      await page.goto(`${base}/instances/def-1`);
      await page.locator('[data-testid="instance-page"][data-project="default"][data-name="def-1"]').waitFor();
      assert.equal(new URL(page.url()).pathname, "/instances/default/def-1");

      // The audit log: the admin's delete in ci (allowed) and the operator's refusals (denied).
      await page.locator('[data-testid="nav-audit"]').first().click();
      await page.locator('[data-testid="audit-row"]').first().waitFor();
      const deleted = page.locator('[data-testid="audit-row"][data-decision="allow"]', { hasText: "InstanceService/DeleteInstance" });
      await deleted.filter({ hasText: "instances/app-1" }).filter({ hasText: "ci" }).first().waitFor();
      await page.locator('[data-testid="audit-row"][data-decision="deny"][data-user="wendy"]').first().waitFor();
      await screenshot(page, "audit");
    } finally {
      await page.close();
    }
  });

  it("an OIDC user signs in at the provider; the header shows the user and group, the page web's instances", async () => {
    const page = await newPage();
    try {
      await page.goto(`${base}/instances`);
      await page.click('[data-testid="signin-oidc"]');
      // The provider's own pages: sign in, then authorize the UI.
      await page.locator('input[name="login"]').fill("olga");
      await page.click('button:has-text("Sign in")');
      await page.locator('h1:has-text("Authorize")').waitFor();
      await page.click("button");
      // Back at the UI, signed in, on the page the sign-in began at.
      await page.locator('[data-testid="logout"]').waitFor();
      assert.match(await page.locator('[data-testid="session-user"]').innerText(), /^oidc:olga\s+\(devs\)\s+in web: viewer$/);
      assert.equal(await page.locator('[data-testid="session-groups"]').innerText(), "(devs)");
      await row(page, "web", "app-1")
        .waitFor()
        .catch(async (e: unknown) => {
          // What the page knew, for a failure that is not the row's fault.
          const stream = await page.locator('[data-testid="stream-state"]').getAttribute("title");
          throw new Error(`${String(e)}; at ${page.url()}, stream: ${stream}`);
        });
      assert.equal(new URL(page.url()).pathname, "/instances");
      await until("the URL names web", async () => queryProject(page) === "web");
      assert.deepEqual(await rows(page), ["web/app-1"]);
      assert.deepEqual(await offered(page), ["web"]);
      // A viewer: power disabled with the reason, no delete.
      const stop = row(page, "web", "app-1").locator('[data-testid="action-stop"]');
      assert.equal(await disabled(stop), true);
      assert.equal(await stop.getAttribute("title"), "needs instances:power in web (your roles: in web: viewer)");
      assert.equal(await row(page, "web", "app-1").locator('[data-testid="action-delete"]').count(), 0);
      await screenshot(page, "instances-oidc-viewer");
    } finally {
      await page.close();
    }
  });
});
