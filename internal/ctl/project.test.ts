// `project`, `role bind|bindings|unbind`, `token create --project` and `--project` on instance
// commands, against a real server with access control on (embedded store, real HTTP): what each
// prints, and what ends up in the store.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { codecs, keys } from "../../pkg/cluster/state/index.js";
import type { Store } from "../../pkg/cluster/store/index.js";
import { startServerWithAccess, type AccessServer } from "../../test/support/api-server.js";
import { ExitCode } from "./errors.js";
import { runCli } from "./testing.js";

describe("project and role binding commands", () => {
  let api: AccessServer;
  let store: Store;
  const cli = (argv: string[], token = api.admin, env: Record<string, string> = {}) =>
    runCli(argv, { server: api.server.url, env: { HYPERVISOR_TOKEN: token, ...env } });
  const ok = async (argv: string[], token?: string, env?: Record<string, string>) => {
    const r = await cli(argv, token, env);
    assert.equal(r.code, ExitCode.Ok, `${argv.join(" ")}: ${r.stderr}`);
    return r.stdout;
  };
  const names = async (project: string) =>
    (await store.range(keys.instancesOf(project))).kvs.map((kv) => codecs.instance.decode(kv.value).name).sort();

  before(async () => {
    api = await startServerWithAccess("hv-ctl-project-");
    store = api.store;
  });

  after(async () => {
    await api?.stop();
  });

  it("project create, list with usage/quota, set and delete", async () => {
    assert.equal(
      await ok(["project", "create", "web", "--max-instances", "2", "--max-vcpus", "4", "--description", "web team"]),
      "project/web created\n",
    );
    await ok(["--project", "web", "instance", "create", "front", "--driver", "mock", "--vcpus", "1", "--memory", "64"]);
    assert.deepEqual(await names("web"), ["front"]);
    assert.deepEqual(await names("default"), [], "--project web did not create in default");
    const table = (await ok(["project", "list"])).split("\n");
    assert.match(table[0]!, /^NAME\s+INSTANCES\s+VCPUS\s+MEMORY-MIB\s+DISK-GIB\s+RESTRICTED\s+DESCRIPTION$/);
    assert.ok(
      table.some((l) => /^web\s+1\/2\s+1\/4\s+64\s+0\s+no\s+web team$/.test(l)),
      table.join("\n"),
    );
    assert.ok(
      table.some((l) => /^default\s+0\s+0\s+0\s+0\s+no\s/.test(l)),
      table.join("\n"),
    );
    // Past the quota: the server's resource_exhausted, nothing created.
    await ok(["-p", "web", "instance", "create", "back", "--driver", "mock", "--vcpus", "1", "--memory", "64"]);
    const over = await cli(["-p", "web", "instance", "create", "third", "--driver", "mock", "--vcpus", "1", "--memory", "64"]);
    assert.equal(over.code, ExitCode.Api);
    assert.match(over.stderr, /^error: resource_exhausted: project web is at its quota: this would make instances 3 > 2/);
    assert.deepEqual(await names("web"), ["back", "front"]);
    // set keeps the limits not given; --no-quota removes them all.
    assert.equal(await ok(["project", "set", "web", "--max-instances", "3"]), "project/web updated\n");
    const q = JSON.parse(await ok(["project", "get", "web", "-o", "json"])) as { quota: { instances: number; vcpus: number } };
    assert.deepEqual([q.quota.instances, q.quota.vcpus], [3, 4]);
    await ok(["project", "set", "web", "--no-quota"]);
    assert.equal(await store.get(keys.projectUsage("web")), undefined);
    // Only an empty project goes.
    const full = await cli(["project", "delete", "web"]);
    assert.equal(full.code, ExitCode.Api);
    assert.match(full.stderr, /failed_precondition: project web holds 2 instance\(s\)/);
    await ok(["-p", "web", "instance", "delete", "front"]);
    await ok(["-p", "web", "instance", "delete", "back"]);
    assert.equal(await ok(["project", "delete", "web"]), "project/web deleted\n");
    assert.equal(await store.get(keys.project("web")), undefined);
  });

  it("a token scoped to a project works there (by flag or by context) and nowhere else; -A lists across projects", async () => {
    await ok(["project", "create", "ci"]);
    await ok(["-p", "ci", "instance", "create", "runner", "--driver", "mock", "--vcpus", "1", "--memory", "64"]);
    await ok(["instance", "create", "plain", "--driver", "mock", "--vcpus", "1", "--memory", "64"]);
    const token = (await ok(["--project", "ci", "token", "create", "--role", "operator", "--user", "bot"])).trim();
    const listed = await ok(["token", "list", "--all"]);
    assert.ok(
      listed.split("\n").some((l) => /\sbot\s+operator@ci\s/.test(l)),
      listed,
    );
    assert.match(await ok(["whoami"], token), /^In project ci:\s+operator$/m);
    assert.match(await ok(["-p", "ci", "instance", "list"], token), /^runner\s/m);
    const elsewhere = await cli(["instance", "list"], token);
    assert.equal(elsewhere.code, ExitCode.Api);
    assert.match(elsewhere.stderr, /permission_denied: ListInstances: bot may not instances:list in project default/);
    // The context's project is what commands act in without --project.
    const file = join(api.dir, "ctl.yaml");
    await writeFile(file, `current-context: c\ncontexts:\n  - name: c\n    server: ${api.server.url}\n    project: ci\n`, { mode: 0o600 });
    assert.match(await ok(["instance", "list"], token, { HYPERVISOR_CONFIG: file }), /^runner\s/m);
    // -A: every project the caller may list, names as <project>/<name>.
    const all = await ok(["instance", "list", "-A"]);
    assert.match(all, /^ci\/runner\s/m);
    assert.match(all, /^default\/plain\s/m);
    assert.doesNotMatch(await ok(["instance", "list", "-A"], token), /plain/);
    const bad = await cli(["--project", "Not_A_Name", "instance", "list"]);
    assert.equal(bad.code, ExitCode.Usage);
    assert.match(bad.stderr, /--project: "Not_A_Name" is not a valid name/);
  });

  it("role bind, bindings and unbind; a binding needs a project that exists", async () => {
    await ok(["project", "create", "ops"]);
    const out = await ok(["--project", "ops", "role", "bind", "--group", "sre", "--role", "operator"]);
    const m = /^rolebinding\/([0-9a-f]{16}) group:sre operator in project ops\n$/.exec(out);
    assert.ok(m, out);
    const cluster = await ok(["role", "bind", "--user", "oidc:alice", "--role", "viewer"]);
    assert.match(cluster, /^rolebinding\/[0-9a-f]{16} user:oidc:alice viewer at cluster scope\n$/);
    const table = await ok(["role", "bindings"]);
    assert.match(table, /^ID\s+SUBJECT\s+ROLE\s+PROJECT\s+CREATED-BY$/m);
    assert.match(table, new RegExp(`^${m[1]}\\s+group:sre\\s+operator\\s+ops\\s+admin$`, "m"));
    assert.match(table, /\suser:oidc:alice\s+viewer\s+\(cluster\)\s+admin$/m);
    const onlyOps = await ok(["-p", "ops", "role", "bindings"]);
    assert.doesNotMatch(onlyOps, /alice/);
    const missing = await cli(["-p", "nope", "role", "bind", "--user", "x", "--role", "viewer"]);
    assert.equal(missing.code, ExitCode.Api);
    assert.match(missing.stderr, /not_found: project "nope" not found/);
    const both = await cli(["role", "bind", "--user", "x", "--group", "y", "--role", "viewer"]);
    assert.equal(both.code, ExitCode.Usage);
    assert.equal(await ok(["role", "unbind", m[1]!]), `rolebinding/${m[1]} deleted\n`);
    assert.equal(await store.get(keys.roleBinding(m[1]!)), undefined);
  });
});
