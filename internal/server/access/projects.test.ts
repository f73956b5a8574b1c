// Projects, role bindings and OIDC users against a real etcd and a real OIDC provider in process:
// isolation through every path a caller reaches instances by, quotas under concurrent creates,
// restricted projects, who may bind what, and the audit events of it all.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AccessService } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { AuditService } from "../../../api/gen/hypervisor/v1/audit_pb.js";
import { ClusterService } from "../../../api/gen/hypervisor/v1/cluster_pb.js";
import { ConsoleKind, ConsoleService } from "../../../api/gen/hypervisor/v1/console_pb.js";
import { EventType, InstanceService, type WatchInstancesResponse } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeService } from "../../../api/gen/hypervisor/v1/node_pb.js";
import { ProjectService } from "../../../api/gen/hypervisor/v1/project_pb.js";
import { openEtcdStore } from "../../../pkg/cluster/etcd/index.js";
import { codecs, keys } from "../../../pkg/cluster/state/index.js";
import type { Store } from "../../../pkg/cluster/store/index.js";
import { startEtcd, type EtcdProcess } from "../../../test/support/etcd.js";
import { refusal } from "../../../test/support/refusal.js";
import { codeLoginIdToken, startOidcProvider, type TestOidcProvider } from "../../../test/support/oidc-provider.js";
import { Server } from "../server.js";
import { AuditLog, OidcVerifier } from "./index.js";
import { startServerWithAccess, type AccessServer } from "../../../test/support/api-server.js";

const REDIRECT = "http://127.0.0.1:1/auth/callback";
const MOCK = { driver: "mock", vcpus: 1, memoryMib: 64n };

describe("projects, role bindings and OIDC users (etcd, an OIDC provider in process)", () => {
  let etcd: EtcdProcess;
  let store: Store;
  let server: Server;
  let api: AccessServer;
  let provider: TestOidcProvider;
  let audit: AuditLog;
  let dir: string;
  let admin: string;

  const clients = (token?: string) => {
    const bearer: Interceptor = (next) => (req) => {
      if (token) req.header.set("Authorization", `Bearer ${token}`);
      return next(req);
    };
    const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", interceptors: [bearer] });
    return {
      access: createClient(AccessService, transport),
      instances: createClient(InstanceService, transport),
      projects: createClient(ProjectService, transport),
      consoles: createClient(ConsoleService, transport),
      nodes: createClient(NodeService, transport),
      audit: createClient(AuditService, transport),
      cluster: createClient(ClusterService, transport),
    };
  };
  const tokenFor = async (user: string, role: string, project = "") =>
    (await clients(admin).access.createToken({ user, roles: [role], project })).token;
  /** Instances under instances/<project>/ in the store itself. */
  const stored = async (project: string) =>
    (await store.range(keys.instancesOf(project))).kvs.map((kv) => codecs.instance.decode(kv.value).name).sort();

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-projects-"));
    etcd = await startEtcd();
    store = await openEtcdStore({ endpoints: [etcd.endpoint] });
    provider = await startOidcProvider({
      accounts: {
        alice: { preferred_username: "alice", groups: ["web-devs"] },
        bob: { preferred_username: "bob", groups: ["others"] },
      },
      redirectUris: [REDIRECT],
    });
    const settings = provider.settings({ usernameClaim: "preferred_username" });
    audit = new AuditLog({ dir: join(dir, "audit"), level: "metadata" });
    api = await startServerWithAccess(
      "hv-projects-",
      {
        audit,
        oidc: new OidcVerifier(settings),
        auth: { oidcIssuer: settings.issuer, oidcClientId: settings.clientId, oidcScopes: settings.scopes },
      },
      store,
    );
    ({ server, admin } = api);
    const a = clients(admin);
    await a.projects.createProject({ name: "web", description: "the web team" });
    await a.projects.createProject({ name: "ci" });
  });

  after(async () => {
    await api?.stop();
    await store?.close();
    await etcd?.stop();
    await provider?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("names are unique per project: the same name in two projects is two instances", async () => {
    const a = clients(admin);
    await a.instances.createInstance({ project: "web", name: "db", spec: MOCK });
    await a.instances.createInstance({ project: "ci", name: "db", spec: MOCK });
    await a.instances.createInstance({ name: "db", spec: MOCK });
    assert.deepEqual(await stored("web"), ["db"]);
    assert.deepEqual(await stored("ci"), ["db"]);
    assert.deepEqual(await stored("default"), ["db"]);
    const again = await refusal(a.instances.createInstance({ project: "web", name: "db", spec: MOCK }));
    assert.equal(again.code, Code.AlreadyExists);
    assert.match(again.message, /instance "db" in project "web" already exists/);
    const none = await refusal(a.instances.createInstance({ project: "nope", name: "x", spec: MOCK }));
    assert.equal(none.code, Code.NotFound);
    assert.match(none.message, /project: "nope" not found/);
    const all = (await a.instances.listInstances({ project: "*" })).instances.map((i) => `${i.project}/${i.name}`);
    assert.deepEqual(all, ["ci/db", "default/db", "web/db"]);
  });

  it("a caller with a role in one project reaches that project's instances and no other, by every path", async () => {
    const a = clients(admin);
    await a.instances.createInstance({ project: "web", name: "front", spec: MOCK });
    await a.instances.createInstance({ project: "ci", name: "runner", spec: MOCK });
    const wendy = clients(await tokenFor("wendy", "operator", "web"));
    const denied = async (p: Promise<unknown>, what: string) => {
      const r = await refusal(p);
      assert.equal(r.code, Code.PermissionDenied, `${what}: ${r.message}`);
      return r.message;
    };

    // list
    assert.deepEqual((await wendy.instances.listInstances({ project: "web" })).instances.map((i) => i.name).sort(), ["db", "front"]);
    assert.deepEqual(
      (await wendy.instances.listInstances({ project: "*" })).instances.map((i) => `${i.project}/${i.name}`),
      ["web/db", "web/front"],
    );
    assert.match(await denied(wendy.instances.listInstances({ project: "ci" }), "list ci"), /may not instances:list in project ci/);
    await denied(wendy.instances.listInstances({}), "list default");
    // get, explain
    assert.equal((await wendy.instances.getInstance({ project: "web", name: "front" })).instance?.project, "web");
    await denied(wendy.instances.getInstance({ project: "ci", name: "runner" }), "get");
    await denied(wendy.instances.explainInstance({ project: "ci", name: "runner" }), "explain");
    assert.ok((await wendy.instances.explainInstance({ project: "web", name: "front" })).summary);
    // logs and console: refused for ci before anything is looked up; in web they get as far as
    // the instance's phase (nothing runs here: no scheduler in this test)
    const logs = async (project: string) => {
      for await (const _ of wendy.instances.getInstanceLogs({ project, name: project === "web" ? "front" : "runner" })) break;
    };
    await denied(logs("ci"), "logs");
    assert.equal((await refusal(logs("web"))).code, Code.FailedPrecondition);
    await denied(wendy.consoles.createConsoleTicket({ project: "ci", name: "runner", kind: ConsoleKind.SERIAL }), "console");
    assert.equal(
      (await refusal(wendy.consoles.createConsoleTicket({ project: "web", name: "front", kind: ConsoleKind.SERIAL }))).code,
      Code.FailedPrecondition,
    );
    // changes
    await denied(wendy.instances.createInstance({ project: "ci", name: "mine", spec: MOCK }), "create");
    const batch = await denied(
      wendy.instances.createInstances({
        instances: [
          { project: "web", name: "ok-1", spec: MOCK },
          { project: "ci", name: "sneak", spec: MOCK },
        ],
      }),
      "a batch reaching into ci",
    );
    assert.match(batch, /in project ci/);
    assert.deepEqual(await stored("ci"), ["db", "runner"], "nothing of the refused calls was written");
    assert.ok(!(await stored("web")).includes("ok-1"));
    await denied(wendy.instances.deleteInstance({ project: "ci", name: "runner" }), "delete");
    await denied(wendy.instances.stopInstance({ project: "ci", name: "runner" }), "stop");
    await wendy.instances.createInstance({ project: "web", name: "mine", spec: MOCK });
    // cluster scope: nodes may be read, not changed; the audit log and other projects are not theirs
    await wendy.nodes.listNodes({});
    await denied(wendy.nodes.cordonNode({ name: "n1" }), "cordon");
    await denied(wendy.audit.listAuditEvents({}), "audit");
    assert.deepEqual(
      (await wendy.projects.listProjects({})).projects.map((p) => p.name),
      ["web"],
    );
    await denied(wendy.projects.getProject({ name: "ci" }), "get project ci");
    // The cluster's counts: of the instances it may list only.
    const mine = (await wendy.instances.listInstances({ project: "*" })).instances.length;
    assert.equal((await wendy.cluster.getCounts({})).instances, mine);
    assert.ok((await a.cluster.getCounts({})).instances > mine);

    // watch of every project it may see: web's instances, and later web's changes only
    const ac = new AbortController();
    const seen: WatchInstancesResponse[] = [];
    let synced!: () => void;
    const ready = new Promise<void>((r) => (synced = r));
    const watching = (async () => {
      try {
        for await (const ev of wendy.instances.watchInstances({ project: "*" }, { signal: ac.signal })) {
          seen.push(ev);
          if (ev.type === EventType.SYNCED) synced();
        }
      } catch {
        // aborted
      }
    })();
    await ready;
    await a.instances.createInstance({ project: "ci", name: "hidden", spec: MOCK });
    await a.instances.deleteInstance({ project: "ci", name: "runner" });
    await a.instances.createInstance({ project: "web", name: "shown", spec: MOCK });
    for (let i = 0; i < 200 && !seen.some((e) => e.instance?.name === "shown"); i++) await new Promise((r) => setTimeout(r, 20));
    // Anything of ci would have come before web's create (one ordered stream): none did.
    ac.abort();
    await watching;
    assert.ok(seen.length > 0);
    for (const ev of seen)
      if (ev.type !== EventType.SYNCED) assert.equal(ev.instance?.project, "web", `${ev.instance?.project}/${ev.instance?.name}`);
    assert.ok(seen.some((e) => e.type === EventType.ADDED && e.instance?.name === "shown"));
    const w = await refusal(
      (async () => {
        for await (const _ of wendy.instances.watchInstances({ project: "ci" })) break;
      })(),
    );
    assert.equal(w.code, Code.PermissionDenied);
  });

  it("quotas hold under 20 concurrent creates that together exceed them: the total never goes over", async () => {
    const a = clients(admin);
    await a.projects.createProject({ name: "q", quota: { instances: 10, vcpus: 7 } });
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) =>
        a.instances.createInstance({ project: "q", name: `q-${i}`, spec: { driver: "mock", vcpus: 2, memoryMib: 64n } }),
      ),
    );
    const ok = results.filter((r) => r.status === "fulfilled").length;
    const refused = results.filter((r) => r.status === "rejected").map((r) => ConnectError.from(r.reason));
    assert.equal(ok, 3, "three of 2 vCPUs fit in 7");
    assert.ok(
      refused.every(
        (e) => e.code === Code.ResourceExhausted && /project q is at its quota: this would make vcpus \d+ > 7/.test(e.rawMessage),
      ),
      refused.map((e) => e.message).join("\n"),
    );
    assert.equal((await stored("q")).length, 3);
    const project = (await a.projects.getProject({ name: "q" })).project!;
    assert.equal(project.usage?.instances, 3);
    assert.equal(project.usage?.vcpus, 6);
    // A removal gives its share back (never placed: removed at once), and the room is used again.
    const gone = (await stored("q"))[0]!;
    await a.instances.deleteInstance({ project: "q", name: gone });
    assert.equal((await a.projects.getProject({ name: "q" })).project?.usage?.vcpus, 4);
    await a.instances.createInstance({ project: "q", name: "q-again", spec: { driver: "mock", vcpus: 2, memoryMib: 64n } });
    // A quota below what the project holds is refused; nothing is removed to fit it.
    const low = await refusal(a.projects.updateProject({ name: "q", quota: { vcpus: 4 }, updateMask: ["quota"] }));
    assert.equal(low.code, Code.FailedPrecondition);
    assert.match(low.message, /holds more than that \(vcpus 6 > 4\)/);
    assert.equal((await stored("q")).length, 3);
  });

  it("a quota set on a project without one counts what it holds, then holds", async () => {
    const a = clients(admin);
    await a.projects.createProject({ name: "late" });
    for (let i = 0; i < 3; i++) await a.instances.createInstance({ project: "late", name: `l-${i}`, spec: MOCK });
    const p = (await a.projects.updateProject({ name: "late", quota: { instances: 4 }, updateMask: ["quota"] })).project!;
    assert.equal(p.usage?.instances, 3);
    assert.equal(codecs.projectUsage.decode((await store.get(keys.projectUsage("late")))!.value).usage?.instances, 3);
    await a.instances.createInstance({ project: "late", name: "l-3", spec: MOCK });
    assert.equal((await refusal(a.instances.createInstance({ project: "late", name: "l-4", spec: MOCK }))).code, Code.ResourceExhausted);
    // Without the quota, the usage key goes and creates are free again.
    await a.projects.updateProject({ name: "late", updateMask: ["quota"] });
    assert.equal(await store.get(keys.projectUsage("late")), undefined);
    await a.instances.createInstance({ project: "late", name: "l-4", spec: MOCK });
  });

  it("a restricted project refuses what reaches the host, naming the field; the rest is created", async () => {
    const a = clients(admin);
    await a.projects.createProject({ name: "locked", restricted: true });
    const cases = [
      [
        { driver: "containerd", image: "busybox", driverConfig: { network: "host" } },
        /spec\.driver_config\.network: "host" reaches the node's network/,
      ],
      [
        { driver: "libvirt", image: "disk", driverConfig: { network: "user" } },
        /spec\.driver_config\.network: "user" reaches the node's loopback/,
      ],
      [{ driver: "libvirt", image: "disk", driverConfig: { network: "bridge:br0" } }, /is a host bridge/],
      [{ driver: "libvirt", kernel: "/boot/vmlinuz" }, /spec\.kernel: is a path on the node/],
    ] as const;
    for (const [spec, why] of cases) {
      const r = await refusal(a.instances.createInstance({ project: "locked", name: "x", spec: { vcpus: 1, memoryMib: 64n, ...spec } }));
      assert.equal(r.code, Code.InvalidArgument, r.message);
      assert.match(r.message, why);
      assert.match(r.message, /project locked is restricted/);
    }
    assert.deepEqual(await stored("locked"), []);
    await a.instances.createInstance({
      project: "locked",
      name: "ok",
      spec: { driver: "libvirt", image: "disk", vcpus: 1, memoryMib: 64n },
    });
    // The same spec is fine in a project that is not restricted.
    await a.instances.createInstance({
      project: "web",
      name: "hostnet",
      spec: { driver: "containerd", image: "busybox", vcpus: 1, memoryMib: 64n, driverConfig: { network: "host" } },
    });
  });

  it("a project-admin binds roles in its project and nowhere else, never more than it holds", async () => {
    const a = clients(admin);
    const pa = clients(await tokenFor("pat", "project-admin", "web"));
    const b = await pa.access.createRoleBinding({ subject: "user:carol", role: "operator", project: "web" });
    assert.equal(b.roleBinding?.createdBy, "pat");
    for (const [req, why] of [
      [{ subject: "user:carol", role: "operator", project: "ci" }, /may not roles:bind in project ci/],
      [{ subject: "user:carol", role: "operator", project: "" }, /may not roles:bind/],
    ] as const) {
      const r = await refusal(pa.access.createRoleBinding(req));
      assert.equal(r.code, Code.PermissionDenied, r.message);
      assert.match(r.message, why);
    }
    const bad = await refusal(pa.access.createRoleBinding({ subject: "carol", role: "operator", project: "web" }));
    assert.equal(bad.code, Code.InvalidArgument);
    assert.match(bad.message, /subject: "carol" must be "user:<name>" or "group:<name>"/);
    // An operator at cluster scope may not bind at all (no roles:bind).
    const op = clients(await tokenFor("oscar", "operator"));
    assert.equal(
      (await refusal(op.access.createRoleBinding({ subject: "user:x", role: "viewer", project: "web" }))).code,
      Code.PermissionDenied,
    );
    // pat sees web's bindings, not ci's; admin sees all.
    await a.access.createRoleBinding({ subject: "group:ci-bots", role: "operator", project: "ci" });
    const mine = (await pa.access.listRoleBindings({ allScopes: true })).roleBindings.map((x) => `${x.subject}@${x.project}`);
    assert.ok(mine.includes("user:carol@web") && !mine.some((m) => m.endsWith("@ci")), mine.join(" "));
    assert.ok((await a.access.listRoleBindings({ allScopes: true })).roleBindings.some((x) => x.subject === "group:ci-bots"));
    await pa.access.deleteRoleBinding({ id: b.roleBinding.id });
    assert.equal(await store.get(keys.roleBinding(b.roleBinding.id)), undefined);
  });

  it("OIDC users hold what their groups are bound to; an expired or wrongly signed ID token is refused", async () => {
    const a = clients(admin);
    await a.access.createRoleBinding({ subject: "group:web-devs", role: "operator", project: "web" });
    assert.equal((await a.access.getAuthConfig({})).oidcIssuer, provider.issuer);

    const aliceToken = await codeLoginIdToken(provider, "alice", REDIRECT);
    const alice = clients(aliceToken);
    const me = await alice.access.whoAmI({});
    assert.equal(me.user, "oidc:alice");
    assert.equal(me.authenticatedBy, "oidc");
    assert.deepEqual(me.groups, ["web-devs"]);
    assert.deepEqual(
      me.projectRights.map((p) => [p.project, p.roles]),
      [["web", ["operator"]]],
    );
    await alice.instances.createInstance({ project: "web", name: "by-alice", spec: MOCK });
    assert.equal(
      (await refusal(alice.instances.createInstance({ project: "ci", name: "by-alice", spec: MOCK }))).code,
      Code.PermissionDenied,
    );

    const bob = clients(await codeLoginIdToken(provider, "bob", REDIRECT));
    assert.equal((await bob.access.whoAmI({})).user, "oidc:bob");
    assert.equal((await refusal(bob.instances.listInstances({ project: "web" }))).code, Code.PermissionDenied);

    const expired = await refusal(
      clients(
        await provider.mintIdToken({ sub: "alice", claims: { preferred_username: "alice", groups: ["web-devs"] }, expiresIn: -120 }),
      ).access.whoAmI({}),
    );
    assert.equal(expired.code, Code.Unauthenticated);
    assert.match(expired.message, /expired/);
    const forged = await refusal(
      clients(
        await provider.mintIdToken({ sub: "alice", claims: { preferred_username: "alice", groups: ["web-devs"] }, key: "other" }),
      ).access.whoAmI({}),
    );
    assert.equal(forged.code, Code.Unauthenticated);
    assert.match(forged.message, /signature/);

    // The audit log has alice's create and her refusal, with her groups and the project.
    await audit.flushed();
    const events = (await a.audit.listAuditEvents({ user: "oidc:alice", limit: 100 })).events;
    const create = events.find((e) => e.method === "InstanceService/CreateInstance" && e.decision === "allow");
    assert.ok(create, events.map((e) => `${e.method} ${e.decision}`).join(", "));
    assert.equal(create.project, "web");
    assert.deepEqual(create.groups, ["web-devs"]);
    assert.equal(create.resource, "instances/by-alice");
    const denial = events.find((e) => e.method === "InstanceService/CreateInstance" && e.decision === "deny");
    assert.equal(denial?.project, "ci");
    assert.equal(denial?.result, "permission_denied");
    assert.ok(
      events.some((e) => e.method === "AccessService/WhoAmI" && e.decision === "allow"),
      "the login",
    );
  });

  it("only an empty project is deleted, and its bindings go with it; default stays", async () => {
    const a = clients(admin);
    await a.projects.createProject({ name: "tmp" });
    await a.instances.createInstance({ project: "tmp", name: "t", spec: MOCK });
    const b = (await a.access.createRoleBinding({ subject: "user:tim", role: "viewer", project: "tmp" })).roleBinding!;
    const full = await refusal(a.projects.deleteProject({ name: "tmp" }));
    assert.equal(full.code, Code.FailedPrecondition);
    assert.match(full.message, /holds 1 instance/);
    // Refused, and left as it was: creates go on.
    await a.instances.createInstance({ project: "tmp", name: "t2", spec: MOCK });
    await a.instances.deleteInstance({ project: "tmp", name: "t" });
    await a.instances.deleteInstance({ project: "tmp", name: "t2" });
    await a.projects.deleteProject({ name: "tmp" });
    assert.equal(await store.get(keys.project("tmp")), undefined);
    assert.equal(await store.get(keys.roleBinding(b.id)), undefined);
    assert.equal((await refusal(a.projects.deleteProject({ name: "default" }))).code, Code.FailedPrecondition);
  });
});
