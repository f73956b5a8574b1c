// The work queue's guarantees: dedupe, one worker per key, backoff per key, terminal errors
// dropped, parallelism across keys.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { TerminalError, WorkQueue } from "./workqueue.js";

async function until(what: string, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (cond()) return;
    await sleep(5);
  }
  assert.fail(`timed out waiting for ${what}`);
}

describe("work queue", () => {
  it("processes a key added many times before a worker takes it once", async () => {
    const q = new WorkQueue<string>();
    for (let i = 0; i < 5; i++) q.add("a");
    q.add("b");
    assert.equal(q.length, 2);
    const seen: string[] = [];
    const ctl = new AbortController();
    const run = q.run(ctl.signal, 1, async (k) => void seen.push(k));
    await until("both processed", () => seen.length === 2);
    ctl.abort();
    await run;
    assert.deepEqual(seen, ["a", "b"]);
  });

  it("never hands one key to two workers, and re-runs a key added while it was processing", async () => {
    const q = new WorkQueue<string>();
    let active = 0;
    let maxActive = 0;
    let runs = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const ctl = new AbortController();
    const run = q.run(ctl.signal, 4, async () => {
      active++;
      maxActive = Math.max(maxActive, active);
      runs++;
      if (runs === 1) await gate;
      active--;
    });
    q.add("k");
    await until("first run started", () => runs === 1);
    q.add("k");
    q.add("k");
    await sleep(20);
    assert.equal(runs, 1, "not started again while processing");
    release();
    await until("second run", () => runs === 2);
    await sleep(20);
    ctl.abort();
    await run;
    assert.equal(maxActive, 1);
    assert.equal(runs, 2, "the adds during processing collapse into one more run");
  });

  it("runs different keys in parallel up to the worker count", async () => {
    const q = new WorkQueue<number>();
    let active = 0;
    let maxActive = 0;
    let finished = 0;
    const ctl = new AbortController();
    const run = q.run(ctl.signal, 3, async () => {
      active++;
      maxActive = Math.max(maxActive, active);
      await sleep(30);
      active--;
      finished++;
    });
    for (let i = 0; i < 9; i++) q.add(i);
    await until("all done", () => finished === 9);
    ctl.abort();
    await run;
    assert.equal(maxActive, 3);
  });

  it("retries a failing key with growing per-key backoff, and forgets it on success", async () => {
    const q = new WorkQueue<string>({ baseDelayMs: 10, maxDelayMs: 40 });
    const times: number[] = [];
    const ctl = new AbortController();
    const run = q.run(ctl.signal, 2, async (k) => {
      if (k !== "flaky") return;
      times.push(Date.now());
      if (times.length < 5) throw new Error("not yet");
    });
    q.add("flaky");
    await until("five attempts", () => times.length === 5);
    await sleep(10);
    assert.equal(q.failuresOf("flaky"), 0, "success forgets the failures");
    ctl.abort();
    await run;
    // Delays of 10, 20, 40, 40 ms: each gap is at least the backoff asked for (timers never fire early).
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    [10, 20, 40, 40].forEach((min, i) => assert.ok(gaps[i]! >= min - 1, `gap ${i} was ${gaps[i]} ms, backoff ${min} ms`));
  });

  it("does not retry a terminal error", async () => {
    const q = new WorkQueue<string>({ baseDelayMs: 1 });
    let runs = 0;
    const ctl = new AbortController();
    const run = q.run(ctl.signal, 1, async () => {
      runs++;
      throw new TerminalError("bad spec");
    });
    q.add("x");
    await until("ran", () => runs === 1);
    await sleep(50);
    assert.equal(runs, 1);
    assert.equal(q.failuresOf("x"), 0);
    ctl.abort();
    await run;
  });

  it("requeues after the time a processor asks for, and keeps the earliest of two delays", async () => {
    const q = new WorkQueue<string>();
    let runs = 0;
    const ctl = new AbortController();
    const run = q.run(ctl.signal, 1, async () => (++runs === 1 ? { requeueAfterMs: 20 } : undefined));
    q.add("t");
    await until("requeued run", () => runs === 2);
    q.addAfter("t", 60_000);
    q.addAfter("t", 10);
    await until("the earlier delay won", () => runs === 3);
    ctl.abort();
    await run;
  });

  it("stops handing out keys once shut down", async () => {
    const q = new WorkQueue<string>();
    const ctl = new AbortController();
    let runs = 0;
    const run = q.run(ctl.signal, 2, async () => void runs++);
    ctl.abort();
    await run;
    q.add("late");
    assert.equal(await q.get(), undefined);
    assert.equal(runs, 0);
  });
});
