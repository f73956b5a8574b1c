// One-machine mode as `make run` starts it: hypervisor-server --dev on the embedded store with an
// agent in the same process, serving TLS with a certificate of the cluster CA it made, and
// writing ctl's context for itself, so ctl needs no flag. It prints where the API is, runs
// instances, stops cleanly on SIGINT, and after a restart still has (and has adopted) what it
// ran, with the same CA.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { binPath, freePort, Proc, until } from "../support/procs.js";

const run = promisify(execFile);

describe("hypervisor-server --dev (one machine, embedded store)", { timeout: 300_000 }, () => {
  let dir: string;
  let port: number;
  let server: Proc;
  // Where the server writes ctl's context and ctl reads it: the test's own file, not the user's.
  const env = () => ({ HYPERVISOR_CONFIG: join(dir, "ctl.yaml") });
  const ctl = async (...args: string[]) =>
    (await run(process.execPath, [binPath("hypervisor-ctl"), ...args], { timeout: 60_000, env: { ...process.env, ...env() } })).stdout;
  const start = () =>
    new Proc("dev server", [binPath("hypervisor-server"), "--dev", "--listen", `127.0.0.1:${port}`, "--data-dir", dir], env());

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-dev-"));
    port = await freePort();
  });
  after(async () => {
    await server?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("prints the API address and serves a Ready node", async () => {
    server = start();
    const line = await server.waitFor(/ API /);
    assert.match(line, new RegExp(`https://127\\.0\\.0\\.1:${port}`));
    const config = await readFile(join(dir, "ctl.yaml"), "utf8");
    assert.match(config, /current-context: dev/);
    assert.match(config, new RegExp(`server: https://127\\.0\\.0\\.1:${port}`));
    assert.equal((await stat(join(dir, "pki", "ca.key"))).mode & 0o777, 0o600, "the CA key is the server's alone");
    const nodes = await until("a Ready node", async () => {
      const items = (JSON.parse(await ctl("node", "list", "-o", "json")) as { items: { name: string; condition?: string }[] }).items;
      return items.length === 1 && items[0]!.condition === "NODE_CONDITION_READY" ? items : undefined;
    });
    assert.equal(nodes.length, 1);
  });

  it("runs instances, stops on SIGTERM with exit 0, and adopts them after a restart", async () => {
    await ctl("instance", "create", "dev-a", "--driver", "mock", "--vcpus", "1", "--memory", "64", "--wait");
    await ctl("instance", "create", "dev-b", "--driver", "mock", "--vcpus", "1", "--memory", "64", "--wait");
    const before = (
      JSON.parse(await ctl("instance", "list", "-o", "json")) as {
        items: { name: string; uid: string; status?: { phase?: string; startTime?: string } }[];
      }
    ).items;
    assert.deepEqual(
      before.map((i) => i.status?.phase),
      ["PHASE_RUNNING", "PHASE_RUNNING"],
    );

    const ca = await readFile(join(dir, "pki", "ca.crt"), "utf8");
    assert.equal(await server.stop(), 0, "exit code after SIGTERM");
    server = start();
    await server.waitFor(/adoption done/);
    const after = await until("both Running again", async () => {
      const items = (JSON.parse(await ctl("instance", "list", "-o", "json")) as { items: typeof before }).items;
      return items.length === 2 && items.every((i) => i.status?.phase === "PHASE_RUNNING") ? items : undefined;
    });
    assert.deepEqual(
      after.map((i) => [i.name, i.uid, i.status?.startTime]),
      before.map((i) => [i.name, i.uid, i.status?.startTime]),
      "adopted, not restarted",
    );
    assert.deepEqual((await readdir(join(dir, "agent", "mock"))).filter((f) => f.endsWith(".json")).sort(), ["dev-a.json", "dev-b.json"]);
    assert.equal(await readFile(join(dir, "pki", "ca.crt"), "utf8"), ca, "the same CA after a restart");
  });
});
