// `audit` against a real server with access control and an audit log: a refused call and a
// change show up newest first with who, what and how it ended; --user filters; -o json carries
// every field; a token without audit:read is refused.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog } from "../server/access/index.js";
import { ExitCode } from "./errors.js";
import { runCli } from "./testing.js";
import { startServerWithAccess, type AccessServer } from "../../test/support/api-server.js";

describe("hypervisor-ctl audit", () => {
  let api: AccessServer;
  let audit: AuditLog;
  const cli = (argv: string[], token = api.admin) => runCli(argv, { server: api.server.url, env: { HYPERVISOR_TOKEN: token } });

  before(async () => {
    audit = new AuditLog({ dir: join(tmpdir(), `hv-ctl-audit-${process.pid}`), level: "metadata" });
    api = await startServerWithAccess("hv-ctl-audit-", { audit });
  });

  after(async () => {
    await api?.stop();
    await audit?.close();
    await rm(join(tmpdir(), `hv-ctl-audit-${process.pid}`), { recursive: true, force: true });
  });

  it("lists refusals and changes newest first, filters by user, and refuses a viewer", async () => {
    const viewer = (await cli(["token", "create", "--role", "viewer", "--user", "val"])).stdout.trim();
    assert.equal(
      (await cli(["instance", "create", "web", "--driver", "mock", "--vcpus", "1", "--memory", "64"], viewer)).code,
      ExitCode.Api,
    );
    const ok = await cli(["instance", "create", "web", "--driver", "mock", "--vcpus", "1", "--memory", "64"]);
    assert.equal(ok.code, ExitCode.Ok, ok.stderr);

    const r = await cli(["audit", "--since", "10m"]);
    assert.equal(r.code, ExitCode.Ok, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assert.match(lines[0]!, /^AGE\s+USER\s+SOURCE\s+METHOD\s+RESOURCE\s+DECISION\s+RESULT\s+MESSAGE$/);
    const created = lines.findIndex((l) => /admin\s+127\.0\.0\.1\s+InstanceService\/CreateInstance\s+instances\/web\s+allow\s+ok/.test(l));
    const refused = lines.findIndex((l) =>
      /val\s+127\.0\.0\.1\s+InstanceService\/CreateInstance\s+instances\/web\s+deny\s+permission_denied\s+CreateInstance: val may not instances:create/.test(
        l,
      ),
    );
    assert.ok(created > 0 && refused > created, `newest first:\n${r.stdout}`);

    const listed = JSON.parse((await cli(["audit", "--user", "val", "-o", "json"])).stdout) as { items: { user: string; verb: string }[] };
    const mine = listed.items;
    assert.ok(mine.length >= 1 && mine.every((e) => e.user === "val"), JSON.stringify(mine));
    assert.equal(mine[0]!.verb, "instances:create");

    const denied = await cli(["audit"], viewer);
    assert.equal(denied.code, ExitCode.Api);
    assert.match(denied.stderr, /permission_denied: .*val may not audit:read/);
    assert.equal((await cli(["audit", "--limit", "0"])).code, ExitCode.Usage);
  });
});
