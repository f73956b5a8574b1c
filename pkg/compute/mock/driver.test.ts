// The mock driver against the conformance suite, plus what only the mock has: scripted
// behaviour from driver config, name checks, and state that survives a kill -9 of its process.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runDriverConformance } from "../driver/conformance.js";
import { InstanceNotFoundError, InvalidSpecError, StartError, type DriverInstanceSpec } from "../driver/index.js";
import { createMockDriver, MockDriver, parseDuration } from "./index.js";

const root = await mkdtemp(join(tmpdir(), "hv-mock-"));
after(() => rm(root, { recursive: true, force: true }));

function mockSpec(name: string, uid: string, config: Record<string, string> = {}): DriverInstanceSpec {
  return {
    name,
    uid,
    labels: {},
    image: "",
    vcpus: 1,
    memoryMiB: 64,
    diskGiB: 0,
    command: [],
    args: [],
    env: {},
    kernel: "",
    initrd: "",
    cmdline: "",
    config,
  };
}

const conformanceDir = join(root, "conformance");
runDriverConformance(
  "mock",
  async () => createMockDriver({ stateDir: conformanceDir }),
  (name, uid, hooks) => mockSpec(name, uid, hooks?.exit ? { run_for: "1s", exit_code: String(hooks.exit.code) } : {}),
);

describe("mock driver behaviour", () => {
  let dir: string;
  let d: MockDriver;
  let n = 0;
  const name = () => `m-${++n}`;
  before(async () => {
    dir = await mkdtemp(join(root, "beh-"));
    d = createMockDriver({ stateDir: dir, capacity: { vcpus: 10, memoryMiB: 10240 } });
  });
  after(() => d.close());

  it("parses Go-style durations and rejects others", () => {
    assert.equal(parseDuration("x", "run_for", "500ms"), 500);
    assert.equal(parseDuration("x", "run_for", "1m30s"), 90_000);
    assert.equal(parseDuration("x", "run_for", "1.5s"), 1500);
    for (const bad of ["", "10", "s", "10 s", "-1s", "1d"]) assert.throws(() => parseDuration("x", "run_for", bad), InvalidSpecError, bad);
  });

  it("rejects names that could leave the state directory, and unknown config keys", async () => {
    for (const bad of ["../x", "a/b", ".hidden", "", "UPPER", "x".repeat(64)]) {
      await assert.rejects(d.create(mockSpec(bad, "u1")), InvalidSpecError, bad);
      await assert.rejects(d.inspect(bad), InvalidSpecError, bad);
    }
    await assert.rejects(d.create(mockSpec(name(), "u1", { run_fro: "1s" })), /unknown mock config key "run_fro"/);
    await assert.rejects(d.create(mockSpec(name(), "u1", { run_for: "soon" })), /run_for "soon" is not a duration/);
    assert.deepEqual(
      (await readdir(dir)).filter((f) => !f.startsWith(".")),
      [],
      "nothing written for rejected specs",
    );
  });

  it("fails start with start_error, as a typed error and a failed state", async () => {
    const nm = name();
    await d.create(mockSpec(nm, "u-err", { start_error: "no bootable disk" }));
    await assert.rejects(d.start(nm), (e) => e instanceof StartError && /no bootable disk/.test(e.message));
    const i = await d.inspect(nm);
    assert.equal(i?.state, "failed");
    assert.equal(i?.message, "no bootable disk");
  });

  it("stop and start of an unknown instance are InstanceNotFoundError", async () => {
    await assert.rejects(d.start("nope"), InstanceNotFoundError);
    await assert.rejects(d.stop("nope", 1000), InstanceNotFoundError);
    await d.destroy("nope");
  });

  it("a stop_delay longer than the timeout is cut short, and start_delay delays start", async () => {
    const nm = name();
    await d.create(mockSpec(nm, "u-slow", { stop_delay: "1h", start_delay: "50ms" }));
    const started = await d.start(nm);
    assert.equal(started.state, "running");
    const stopped = await d.stop(nm, 20);
    assert.equal(stopped.state, "stopped");
  });

  it("honours the abort signal during a slow start", async () => {
    const nm = name();
    await d.create(mockSpec(nm, "u-abort", { start_delay: "1h" }));
    const ctl = new AbortController();
    const p = d.start(nm, { signal: ctl.signal });
    ctl.abort();
    await assert.rejects(p, { name: "AbortError" });
    assert.equal((await d.inspect(nm))?.state, "created");
  });

  it("reports synthetic stats and the configured capacity", async () => {
    const nm = name();
    await d.create(mockSpec(nm, "u-stats"));
    await d.start(nm);
    const s = await d.stats(nm);
    assert.equal(s.memoryLimitBytes, 64 * 1024 * 1024);
    assert.ok(s.memoryUsedBytes > 0);
    const fp = await d.fingerprint();
    assert.equal(fp.attributes.capacity_vcpus, "10");
    assert.equal(fp.attributes.capacity_memory_mib, "10240");
    assert.deepEqual(d.capabilities, {
      console: false,
      balloon: false,
      stats: true,
      snapshot: false,
      migrate: false,
      logs: false,
      images: false,
    });
  });

  it("creating a namesake with another uid is refused", async () => {
    const nm = name();
    await d.create(mockSpec(nm, "u-a"));
    await assert.rejects(d.create(mockSpec(nm, "u-b")), /already exists with uid u-a/);
  });

  it("keeps running instances through a kill -9 of the process that started them", async () => {
    const killDir = join(root, "killed");
    const moduleUrl = new URL("./index.js", import.meta.url).href;
    const script = `
      const { createMockDriver } = await import(${JSON.stringify(moduleUrl)});
      const d = createMockDriver({ stateDir: ${JSON.stringify(killDir)} });
      const spec = ${JSON.stringify(mockSpec("survivor", "u-survivor", { run_for: "1h" }))};
      await d.create(spec);
      await d.start("survivor");
      console.log("started");
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (b: Buffer) => b.toString().includes("started") && resolve());
      child.once("exit", (code) => reject(new Error(`child exited ${code} before starting the instance`)));
    });
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
    const fresh = createMockDriver({ stateDir: killDir });
    const [found, ...rest] = await fresh.list();
    assert.equal(rest.length, 0);
    assert.equal(found?.name, "survivor");
    assert.equal(found?.uid, "u-survivor");
    assert.equal(found?.state, "running");
    assert.equal(found?.details.start_count, "1");
    await fresh.close();
  });
});

describe("mock driver without a state directory (the scale bench's simulated nodes)", () => {
  it("runs instances in memory, each driver object its own, and timed exits still happen", async () => {
    const a = createMockDriver({});
    const b = createMockDriver({});
    assert.equal((await a.fingerprint()).healthy, true);
    assert.equal((await a.fingerprint()).attributes.state_dir, "(memory)");
    await a.create(mockSpec("mem-1", "u-mem-1"));
    const running = await a.start("mem-1");
    assert.equal(running.state, "running");
    assert.equal((await a.inspect("mem-1"))?.startedAt, running.startedAt);
    assert.equal(await b.inspect("mem-1"), undefined, "another driver object shares nothing");
    await a.create(mockSpec("mem-2", "u-mem-2", { run_for: "50ms", exit_code: "4" }));
    await a.start("mem-2");
    await new Promise((r) => setTimeout(r, 120));
    const exited = await a.inspect("mem-2");
    assert.equal(exited?.state, "exited");
    assert.equal(exited?.exitCode, 4);
    assert.deepEqual((await a.list()).map((i) => i.name).sort(), ["mem-1", "mem-2"]);
    assert.equal((await a.stop("mem-1", 1000)).state, "stopped");
    await a.destroy("mem-1");
    await a.destroy("mem-2");
    assert.deepEqual(await a.list(), []);
    await assert.rejects(a.start("mem-1"), InstanceNotFoundError);
    await a.close();
    await b.close();
  });
});
