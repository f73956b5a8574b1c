// The audit log on a real server with access on: refusals and changes become events with the
// right user, decision and result, reads do not, logins do; the API lists them newest first to an
// admin only; level request keeps the request with secrets redacted; the file rotates; and while
// the file cannot be written, changes are refused (fail closed) but reads go on, until it heals.
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AccessService } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { AuditService } from "../../../api/gen/hypervisor/v1/audit_pb.js";
import { InstanceService } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { openEmbeddedStore, type Store } from "../../../pkg/cluster/store/index.js";
import { Server } from "../server.js";
import { ADMIN_TOKEN_FILE, AUDIT_FILE, AuditLog, type AuditLevel } from "./index.js";
import { linesBackward } from "./audit.js";

describe("the audit log", () => {
  let dir: string;
  let store: Store;
  let server: Server;
  let audit: AuditLog;
  let admin = "";
  const start = async (level: AuditLevel, auditDir = join(dir, "audit"), maxFileBytes?: number) => {
    await server?.stop();
    await audit?.close();
    audit = new AuditLog({ dir: auditDir, level, ...(maxFileBytes ? { maxFileBytes, maxFiles: 3 } : {}) });
    server = new Server({
      store,
      host: "127.0.0.1",
      port: 0,
      version: "test",
      controllers: false,
      access: { bootstrapDir: join(dir, "pki") },
      audit,
    });
    await server.start();
    admin = (await readFile(join(dir, "pki", ADMIN_TOKEN_FILE), "utf8")).trim();
  };
  const bearer =
    (token?: string): Interceptor =>
    (next) =>
    (req) => {
      if (token) req.header.set("Authorization", `Bearer ${token}`);
      return next(req);
    };
  const as = (token?: string) => {
    const t = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", interceptors: [bearer(token)] });
    return { access: createClient(AccessService, t), audit: createClient(AuditService, t), instances: createClient(InstanceService, t) };
  };
  const failsWith = async (p: Promise<unknown>) => {
    try {
      await p;
    } catch (e) {
      return ConnectError.from(e);
    }
    return assert.fail("succeeded");
  };
  const spec = { driver: "mock", vcpus: 1, memoryMib: 64n };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-audit-"));
    store = await openEmbeddedStore(join(dir, "store"), { sync: false });
    await start("metadata");
  });

  after(async () => {
    await server?.stop();
    await audit?.close();
    await store?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("records changes, refusals and logins with who, what and the outcome; not reads", async () => {
    const { token: op, apiToken: opToken } = await as(admin).access.createToken({ roles: ["operator"], user: "ops" });
    const { token: viewer } = await as(admin).access.createToken({ roles: ["viewer"], user: "val" });
    await as(op).access.whoAmI({});
    await as(op).instances.createInstance({ name: "web", spec });
    await as(op).instances.listInstances({});
    await failsWith(as(viewer).instances.deleteInstance({ name: "web" }));
    await failsWith(as(`hvt_zzzzzzzzzz.${"A".repeat(43)}`).instances.deleteInstance({ name: "web" }));
    await failsWith(as(op).instances.deleteInstance({ name: "nowhere" }));

    const events = (await as(admin).audit.listAuditEvents({})).events;
    const find = (f: (e: (typeof events)[number]) => boolean) => events.find(f);
    const created = find((e) => e.method === "InstanceService/CreateInstance");
    assert.ok(created, JSON.stringify(events.map((e) => e.method)));
    assert.equal(created.user, "ops");
    assert.equal(created.tokenId, opToken!.id);
    assert.equal(created.verb, "instances:create");
    assert.equal(created.resource, "instances/web");
    assert.equal(created.decision, "allow");
    assert.equal(created.result, "ok");
    assert.equal(created.sourceAddress, "127.0.0.1");
    assert.ok(created.id && created.time);
    assert.equal(
      find((e) => e.method === "InstanceService/ListInstances"),
      undefined,
      "reads are not recorded",
    );
    assert.ok(
      find((e) => e.method === "AccessService/WhoAmI" && e.user === "ops"),
      "a login",
    );
    const denied = find((e) => e.user === "val" && e.method === "InstanceService/DeleteInstance");
    assert.equal(denied?.decision, "deny");
    assert.equal(denied?.result, "permission_denied");
    assert.match(denied?.message ?? "", /val may not instances:delete/);
    const forged = find((e) => e.user === "" && e.method === "InstanceService/DeleteInstance");
    assert.equal(forged?.result, "unauthenticated");
    const missing = find((e) => e.resource === "instances/nowhere");
    assert.equal(missing?.decision, "allow");
    assert.equal(missing?.result, "not_found");
    // Newest first; filtered by user; the file holds the same, 0600.
    assert.ok(events.length >= 6);
    for (let i = 1; i < events.length; i++) assert.ok(Number(events[i - 1]!.time!.seconds) >= Number(events[i]!.time!.seconds));
    assert.ok((await as(admin).audit.listAuditEvents({ user: "val" })).events.every((e) => e.user === "val"));
    await audit.flushed();
    assert.equal((await stat(join(dir, "audit", AUDIT_FILE))).mode & 0o777, 0o600);
    assert.equal((await failsWith(as(op).audit.listAuditEvents({}))).code, Code.PermissionDenied);
  });

  it("level request keeps the request, secret environment values redacted", async () => {
    await start("request");
    await as(admin).instances.createInstance({ name: "db", spec: { ...spec, secretEnv: { PASSWORD: "hunter2" } } });
    const e = (await as(admin).audit.listAuditEvents({ limit: 5 })).events.find((x) => x.resource === "instances/db");
    assert.ok(e, "the create's event");
    assert.match(e.requestJson, /"PASSWORD":"<redacted>"/);
    await audit.flushed();
    assert.doesNotMatch(await readFile(join(dir, "audit", AUDIT_FILE), "utf8"), /hunter2/);
  });

  it("rotates past its size and lists across the files kept", async () => {
    const rdir = join(dir, "rotating");
    await start("metadata", rdir, 2000);
    for (let i = 0; i < 20; i++) await failsWith(as().instances.deleteInstance({ name: `x${i}` }));
    // The answers do not wait for their events' writes.
    await audit.flushed();
    const files = (await readdir(rdir)).sort();
    assert.deepEqual(files, [AUDIT_FILE, `${AUDIT_FILE}.1`, `${AUDIT_FILE}.2`]);
    const listed = (await as(admin).audit.listAuditEvents({ limit: 1000 })).events;
    assert.ok(listed.some((e) => e.resource === "instances/x19") && listed.length > 5, `${listed.length} events`);
  });

  it("fails closed while the file cannot be written: changes refused, reads go on, and it heals", async () => {
    const blocker = join(dir, "blocker");
    await writeFile(blocker, "a file where the audit directory's parent should be");
    await start("metadata", join(blocker, "audit"));
    const refused = await failsWith(as(admin).instances.createInstance({ name: "unrecorded", spec }));
    assert.equal(refused.code, Code.Unavailable);
    assert.match(refused.rawMessage, /audit log unavailable/);
    assert.ok(
      (await as(admin).instances.listInstances({})).instances.every((i) => i.name !== "unrecorded"),
      "it did not run",
    );
    await rm(blocker);
    await as(admin).instances.createInstance({ name: "recorded", spec });
    await audit.flushed();
    assert.match(await readFile(join(blocker, "audit", AUDIT_FILE), "utf8"), /instances\/recorded/);
  });
});

describe("reading the audit file backwards", () => {
  it("yields every line, last first, across chunk boundaries; stops when the budget is spent", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hv-audit-back-"));
    try {
      // Lines of varied length over several 256 KiB chunks; the file ends with a newline.
      const lines = Array.from({ length: 9000 }, (_, i) => `${i}:${"x".repeat(i % 177)}`);
      const file = join(dir, "a.log");
      await writeFile(file, lines.join("\n") + "\n");
      const back: string[] = [];
      let budget = Infinity;
      for await (const l of linesBackward(
        file,
        () => budget,
        (n) => (budget -= n),
      ))
        back.push(l);
      assert.deepEqual(back, [...lines].reverse());
      // A budget of one chunk reads only the newest lines.
      budget = 1;
      const some: string[] = [];
      for await (const l of linesBackward(
        file,
        () => budget,
        (n) => (budget -= n),
      ))
        some.push(l);
      assert.ok(some.length > 0 && some.length < lines.length, `${some.length}`);
      assert.deepEqual(some, [...lines].reverse().slice(0, some.length));
      assert.deepEqual(
        await collect(
          linesBackward(
            join(dir, "missing"),
            () => 1,
            () => undefined,
          ),
        ),
        [],
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

async function collect(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const x of it) out.push(x);
  return out;
}
