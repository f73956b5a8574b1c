// Access control, from the service descriptors to a real server: every method of every service in
// api/gen has a rule (a new RPC without one fails here), docs/access.md's table is what the code
// decides for each built-in role, and a server with access on authenticates and authorizes real
// tokens: the bootstrap token (made once), tokens made through the API with no more than their
// maker holds, revoked, expired and forged tokens, anonymous callers, and /metrics.
import assert from "node:assert/strict";
import { readdir, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { DescService } from "@bufbuild/protobuf";
import { Code, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AccessService } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { NodeService } from "../../../api/gen/hypervisor/v1/node_pb.js";
import { InstanceService } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import type { Store } from "../../../pkg/cluster/store/index.js";
import { Server } from "../server.js";
import { startServerWithAccess, type AccessServer } from "../../../test/support/api-server.js";
import { refusal } from "../../../test/support/refusal.js";
import {
  ADMIN_TOKEN_FILE,
  ANONYMOUS,
  Authorizer,
  grant,
  newToken,
  noGrants,
  ROLE_NAMES,
  RULES,
  tokenRecord,
  UNRESTRICTED,
  withGrants,
  type Caller,
} from "./index.js";
import { STORE_READS_PER_SECOND } from "./authorizer.js";
import { MAX_TOKENS_PER_USER } from "./access-service.js";
import { codecs, keys } from "../../../pkg/cluster/state/index.js";

const GEN = fileURLToPath(new URL("../../../api/gen/hypervisor/v1/", import.meta.url));
const DOC = fileURLToPath(new URL("../../../../docs/access.md", import.meta.url));

async function allMethods(): Promise<string[]> {
  const out: string[] = [];
  for (const f of (await readdir(GEN)).filter((f) => f.endsWith("_pb.js")).sort()) {
    const mod = (await import(join(GEN, f))) as Record<string, unknown>;
    for (const v of Object.values(mod)) {
      const s = v as DescService;
      if (s && typeof s === "object" && s.kind === "service") for (const m of s.methods) out.push(`${s.typeName}/${m.name}`);
    }
  }
  return out.sort();
}

const roleCaller = (role: string, project = ""): Caller =>
  withGrants({ kind: "user", user: `a-${role}`, groups: [], by: "token", tokenId: "x" }, grant(noGrants(), role, project));

describe("access rules", () => {
  it("every method of every service has a rule, and no rule names a method that does not exist", async () => {
    const methods = await allMethods();
    assert.ok(methods.length > 40, `found ${methods.length} methods`);
    assert.deepEqual(
      methods.filter((m) => !RULES.has(m)),
      [],
      "methods without a rule",
    );
    assert.deepEqual(
      [...RULES.keys()].filter((k) => !methods.includes(k)),
      [],
      "rules of no method",
    );
  });

  it("each built-in role is allowed and refused as docs/access.md says, for every method, bound at cluster scope or in a project", async () => {
    const doc = (await readFile(DOC, "utf8")).split("\n");
    /** The rows of the table whose header's first cell matches `head`. */
    const table = (head: RegExp) => {
      const at = doc.findIndex((l) => head.test(l.split("|")[1]?.trim() ?? ""));
      assert.ok(at >= 0, `docs/access.md has a table headed ${head}`);
      const header = doc[at]!.split("|")
        .slice(1, -1)
        .map((c) => c.trim());
      const rows: string[][] = [];
      for (let i = at + 2; i < doc.length && doc[i]!.startsWith("|"); i++)
        rows.push(
          doc[i]!.split("|")
            .slice(1, -1)
            .map((c) => c.trim()),
        );
      return { header, rows };
    };
    const cluster = table(/^method$/);
    const inProject = table(/^method \(bound in project p/);
    assert.deepEqual(cluster.header.slice(2), [...ROLE_NAMES]);
    assert.deepEqual(inProject.header.slice(1), [...ROLE_NAMES]);
    for (const t of [cluster, inProject]) {
      const documented = new Set(t.rows.map((r) => `hypervisor.v1.${r[0]!.replace(/`/g, "")}`));
      assert.deepEqual(
        [...RULES.keys()].filter((k) => !documented.has(k)),
        [],
        "rules missing from the doc's table",
      );
    }
    const authz = new Authorizer(undefined as unknown as Store);
    for (const r of cluster.rows) {
      const method = `hypervisor.v1.${r[0]!.replace(/`/g, "")}`;
      const rule = RULES.get(method);
      assert.ok(rule, `the doc names ${method}, which has no rule`);
      assert.equal(r[1]!.replace(/`/g, ""), rule.kind === "right" ? rule.right : rule.kind, method);
      ROLE_NAMES.forEach((role, i) => {
        const allowed = authz.decide(roleCaller(role), rule, method).allowed;
        assert.equal(r[2 + i], allowed ? "yes" : "no", `${method} for ${role}`);
      });
    }
    // The same roles bound in project p, for a request in p; and refused for a request in q.
    const inP = { project: "p", name: "p", instances: [{ project: "p" }] };
    const inQ = { project: "q", name: "q", instances: [{ project: "q" }] };
    for (const r of inProject.rows) {
      const method = `hypervisor.v1.${r[0]!.replace(/`/g, "")}`;
      const rule = RULES.get(method)!;
      ROLE_NAMES.forEach((role, i) => {
        const allowed = authz.decide(roleCaller(role, "p"), rule, method, inP).allowed;
        assert.equal(r[1 + i], allowed ? "yes" : "no", `${method} for ${role} in project p`);
        if (rule.kind === "right" && rule.in && rule.in(inQ) !== "*")
          assert.equal(authz.decide(roleCaller(role, "p"), rule, method, inQ).allowed, false, `${method} for ${role} of p, in q`);
      });
    }
  });

  it("anonymous callers reach only public calls; nodes only theirs; servers everything but the nodes' calls", () => {
    const authz = new Authorizer(undefined as unknown as Store);
    const server: Caller = { ...UNRESTRICTED, user: "server:s", by: "certificate" };
    const node: Caller = withGrants({ kind: "node", user: "node:n", groups: [], by: "certificate", tokenId: "" }, noGrants());
    for (const [method, rule] of RULES) {
      const anon = authz.decide(ANONYMOUS, rule, method);
      assert.equal(anon.allowed, rule.kind === "public", method);
      if (!anon.allowed && rule.kind !== "node" && rule.kind !== "servers") assert.equal(anon.code, Code.Unauthenticated, method);
      assert.equal(
        authz.decide(node, rule, method).allowed,
        rule.kind === "public" || rule.kind === "node" || rule.kind === "authenticated",
        method,
      );
      assert.equal(authz.decide(server, rule, method).allowed, rule.kind !== "node", method);
    }
    assert.equal(authz.decide(server, undefined, "Unknown/Method").allowed, false, "no rule: refused");
  });

  it("a user's certificate is a user with only its bindings: no node's call, no server's, no right of its own", async () => {
    const authz = new Authorizer(undefined as unknown as Store);
    const robot = await authz.authenticate(undefined, { kind: "user", name: "robot", serial: "03" });
    assert.deepEqual(
      [robot.kind, robot.user, robot.by, robot.tokenId, [...robot.roles], robot.rights.size, robot.projects.size],
      ["user", "robot", "certificate", "", [], 0, 0],
    );
    for (const [method, rule] of RULES) {
      const d = authz.decide(robot, rule, method);
      assert.equal(d.allowed, rule.kind === "public" || rule.kind === "authenticated", method);
      if (!d.allowed) assert.equal(d.code, Code.PermissionDenied, method);
    }
  });
});

describe("tokens the server's copy lacks", () => {
  it("are read from the store at most STORE_READS_PER_SECOND a second; a real one is found within that", async () => {
    let now = 1_000_000;
    let reads = 0;
    const t = newToken();
    const record = tokenRecord(t, { user: "late", roles: ["viewer"], ttlSeconds: 3600, description: "", createdBy: "admin", nowMs: now });
    const store = {
      get: (key: string) => {
        reads++;
        return Promise.resolve(
          key === keys.apiToken(t.id)
            ? { key, value: codecs.apiToken.encode(record), createRevision: 1, modRevision: 1, version: 1, lease: "0" }
            : undefined,
        );
      },
    } as unknown as Store;
    const authz = new Authorizer(store, { get: () => undefined }, () => now);
    const madeUp = () => `Bearer ${newToken().token}`;
    for (let i = 0; i < 100; i++) await assert.rejects(authz.authenticate(madeUp(), undefined), /not a valid token/);
    assert.equal(reads, STORE_READS_PER_SECOND, "the burst, then no more");
    // Within the budget a token made a moment ago elsewhere is found in the store.
    now += 1000;
    assert.equal((await authz.authenticate(`Bearer ${t.token}`, undefined)).user, "late");
    assert.equal(reads, STORE_READS_PER_SECOND + 1);
  });
});

describe("a server with access on", () => {
  let api: AccessServer;
  let dir: string;
  let store: Store;
  let server: Server;
  const withToken =
    (token: string | undefined): Interceptor =>
    (next) =>
    (req) => {
      if (token !== undefined) req.header.set("Authorization", `Bearer ${token}`);
      return next(req);
    };
  const clients = (token?: string) => {
    const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", interceptors: [withToken(token)] });
    return {
      access: createClient(AccessService, transport),
      instances: createClient(InstanceService, transport),
      nodes: createClient(NodeService, transport),
    };
  };
  const code = refusal;
  let admin = "";

  before(async () => {
    api = await startServerWithAccess("hv-access-");
    ({ dir, store, server, admin } = api);
  });

  after(async () => {
    await server?.stop();
    await api?.stop();
  });

  it("makes one bootstrap token, 0600, user admin with role admin", async () => {
    assert.match(admin, /^hvt_[a-z0-9]{10}\.[A-Za-z0-9_-]{43}$/);
    assert.equal((await stat(join(dir, "pki", ADMIN_TOKEN_FILE))).mode & 0o777, 0o600);
    const me = await clients(admin).access.whoAmI({});
    assert.equal(me.user, "admin");
    assert.equal(me.authenticatedBy, "token");
    assert.deepEqual(me.roles, ["admin"]);
    assert.ok(me.rights.includes("tokens:manage") && me.rights.includes("instances:create"));
  });

  it("refuses a caller without credentials, except for the public calls", async () => {
    const anon = clients();
    assert.equal((await code(anon.instances.listInstances({}))).code, Code.Unauthenticated);
    assert.equal((await anon.access.whoAmI({})).authenticatedBy, "none");
    assert.equal((await code(anon.access.listTokens({}))).code, Code.Unauthenticated);
  });

  it("refuses malformed, forged, revoked and expired tokens as unauthenticated", async () => {
    const id = admin.slice(4, 14);
    for (const [token, why] of [
      ["nonsense", /malformed/],
      [`hvt_${id}.${"A".repeat(43)}`, /not a valid token/],
      [`hvt_zzzzzzzzzz.${"A".repeat(43)}`, /not a valid token/],
    ] as const) {
      const r = await code(clients(token).instances.listInstances({}));
      assert.equal(r.code, Code.Unauthenticated, token);
      assert.match(r.message, why);
    }
    const { token: short } = await clients(admin).access.createToken({ roles: ["viewer"], ttlSeconds: 1 });
    await clients(short).instances.listInstances({});
    await new Promise((r) => setTimeout(r, 1200));
    assert.match((await code(clients(short).instances.listInstances({}))).message, /expired/);
    const { token: doomed, apiToken } = await clients(admin).access.createToken({ roles: ["viewer"] });
    await clients(doomed).instances.listInstances({});
    await clients(admin).access.revokeToken({ id: apiToken!.id });
    const r = await code(clients(doomed).instances.listInstances({}));
    assert.equal(r.code, Code.Unauthenticated);
    assert.match(r.message, /revoked/);
  });

  it("a viewer reads but changes nothing, and cannot grant more than it holds", async () => {
    const { token: viewer } = await clients(admin).access.createToken({ roles: ["viewer"], description: "ci" });
    const v = clients(viewer);
    assert.deepEqual((await v.instances.listInstances({})).instances, []);
    const denied = await code(v.instances.createInstance({ name: "x", spec: { driver: "mock", vcpus: 1, memoryMib: 64n } }));
    assert.equal(denied.code, Code.PermissionDenied);
    assert.match(denied.message, /admin may not instances:create in project default \(roles: viewer\)/);
    const escalate = await code(v.access.createToken({ roles: ["operator"] }));
    assert.equal(escalate.code, Code.PermissionDenied);
    assert.match(escalate.message, /may not grant role operator/);
    assert.equal((await code(v.access.createToken({ roles: ["viewer"], user: "someone-else" }))).code, Code.PermissionDenied);
    assert.equal((await code(v.access.listTokens({ allUsers: true }))).code, Code.PermissionDenied);
    // Its own viewer token, yes.
    const own = await v.access.createToken({ roles: ["viewer"] });
    assert.equal(own.apiToken?.user, "admin", "a token for its own user (the viewer token's user)");
    assert.equal((await code(v.nodes.cordonNode({ name: "n1" }))).code, Code.PermissionDenied);
  });

  it("an operator runs instances but cannot purge a disk; admin lists everyone's tokens and revokes any", async () => {
    const { token: op } = await clients(admin).access.createToken({ roles: ["operator"], user: "ops" });
    const o = clients(op);
    assert.equal((await o.access.whoAmI({})).user, "ops");
    const made = await o.instances.createInstance({ name: "web", spec: { driver: "mock", vcpus: 1, memoryMib: 64n } });
    assert.equal(made.instance?.name, "web");
    const purge = await code(o.nodes.purgeOrphan({ node: "n1", name: "x" }));
    assert.equal(purge.code, Code.PermissionDenied);
    assert.match(purge.message, /ops may not nodes:purge/);
    const mine = await o.access.listTokens({});
    assert.ok(mine.apiTokens.every((t) => t.user === "ops") && mine.apiTokens.length === 1);
    const all = await clients(admin).access.listTokens({ allUsers: true });
    assert.ok(all.apiTokens.some((t) => t.user === "ops") && all.apiTokens.some((t) => t.createdBy === "bootstrap"));
    // Someone else's token is not found for a caller who may not manage it.
    const adminOwn = all.apiTokens.find((t) => t.createdBy === "bootstrap")!;
    assert.equal((await code(o.access.revokeToken({ id: adminOwn.id }))).code, Code.NotFound);
  });

  it("a user holds at most MAX_TOKENS_PER_USER live tokens; revoking one makes room", async () => {
    const ids: string[] = [];
    for (let i = 0; i < MAX_TOKENS_PER_USER; i++)
      ids.push((await clients(admin).access.createToken({ roles: ["viewer"], user: "many" })).apiToken!.id);
    const over = await code(clients(admin).access.createToken({ roles: ["viewer"], user: "many" }));
    assert.equal(over.code, Code.ResourceExhausted);
    assert.match(over.message, /"many" holds 100 live tokens/);
    await clients(admin).access.revokeToken({ id: ids[0]! });
    await clients(admin).access.createToken({ roles: ["viewer"], user: "many" });
  });

  it("/metrics needs cluster:metrics: 401 without a token, 403 for an operator, 200 for admin", async () => {
    const get = async (token?: string) =>
      (await fetch(`${server.url}/metrics`, token ? { headers: { authorization: `Bearer ${token}` } } : {})).status;
    const { token: op } = await clients(admin).access.createToken({ roles: ["operator"] });
    assert.equal(await get(), 401);
    assert.equal(await get(op), 403);
    assert.equal(await get(admin), 200);
  });

  it("a second start makes no second bootstrap token, even with the file gone", async () => {
    await server.stop();
    await rm(join(dir, "pki", ADMIN_TOKEN_FILE));
    server = new Server({
      store,
      host: "127.0.0.1",
      port: 0,
      version: "test",
      controllers: false,
      access: { bootstrapDir: join(dir, "pki") },
    });
    await server.start();
    await assert.rejects(stat(join(dir, "pki", ADMIN_TOKEN_FILE)), /ENOENT/);
    assert.equal((await clients(admin).access.whoAmI({})).user, "admin", "the first token still works");
  });
});
