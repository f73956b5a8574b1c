// One-machine mode as `make run` starts it: hypervisor-server --dev on the embedded store with an
// agent in the same process, serving TLS with a certificate of the cluster CA it made, and
// writing ctl's context for itself (with the bootstrap admin token, as every call needs one), so
// ctl needs no flag and no token of its own. It prints where the API and the token file are, runs
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
  // Nothing else of the runner's environment chooses a server, a CA or a token: ctl is plain.
  const plain = { HYPERVISOR_SERVER: "", HYPERVISOR_CA_FILE: "", HYPERVISOR_TOKEN: "", HYPERVISOR_CONTEXT: "" };
  const ctlAs = async (token: string, ...args: string[]) =>
    (
      await run(process.execPath, [binPath("hypervisor-ctl"), ...args], {
        timeout: 60_000,
        env: { ...process.env, ...env(), ...plain, HYPERVISOR_TOKEN: token },
      })
    ).stdout;
  const ctl = (...args: string[]) => ctlAs("", ...args);
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
    const tokenFile = join(dir, "pki", "admin-token");
    const ui = await server.waitFor(/ UI /);
    assert.ok(ui.includes(`log in with the token in ${tokenFile}`), ui);
    const config = await readFile(join(dir, "ctl.yaml"), "utf8");
    assert.match(config, /current-context: dev/);
    assert.match(config, new RegExp(`server: https://127\\.0\\.0\\.1:${port}`));
    assert.equal((await stat(join(dir, "pki", "ca.key"))).mode & 0o777, 0o600, "the CA key is the server's alone");
    // The bootstrap admin token: beside the CA, the server's alone, and in the dev context (whose
    // file is then the user's alone too).
    const token = (await readFile(tokenFile, "utf8")).trim();
    assert.match(token, /^hvt_[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    assert.equal((await stat(tokenFile)).mode & 0o777, 0o600, "the admin token is the server's alone");
    assert.ok(config.includes(`token: ${token}`), "the dev context carries the admin token");
    assert.equal((await stat(join(dir, "ctl.yaml"))).mode & 0o777, 0o600, "ctl's file holds a token: the user's alone");
    const nodes = await until("a Ready node", async () => {
      const items = (JSON.parse(await ctl("node", "list", "-o", "json")) as { items: { name: string; condition?: string }[] }).items;
      return items.length === 1 && items[0]!.condition === "NODE_CONDITION_READY" ? items : undefined;
    });
    assert.equal(nodes.length, 1);
    // The context's token is what lets ctl in: a token this cluster never made (it overrides the
    // context's) is refused.
    await assert.rejects(ctlAs(`hvt_0000000000.${"A".repeat(43)}`, "node", "list"), /not a valid token of this cluster/);
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
    const token = await readFile(join(dir, "pki", "admin-token"), "utf8");
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
    assert.equal(await readFile(join(dir, "pki", "admin-token"), "utf8"), token, "the bootstrap token is made once");
  });
});
