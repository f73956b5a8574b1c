// Deadlines of driver calls: the caller gets control back at the deadline or at its own abort,
// whatever the driver does, and leaves nothing listening on its long-lived signal.
import assert from "node:assert/strict";
import { getEventListeners, setMaxListeners } from "node:events";
import { describe, it } from "node:test";
import type { Driver, DriverInstance } from "../../pkg/compute/driver/index.js";
import { DeadlineDriver, DeadlineExceededError, DEFAULT_DEADLINES, underDeadline } from "./deadlines.js";

/** A driver call that never ends and ignores its signal; it records the signal it was given. */
function hanging(): { fn: (s: AbortSignal) => Promise<never>; signal: () => AbortSignal | undefined } {
  let seen: AbortSignal | undefined;
  return {
    fn: (s) => {
      seen = s;
      return new Promise<never>(() => undefined);
    },
    signal: () => seen,
  };
}

describe("underDeadline", () => {
  it("abandons a call that ignores its signal at the deadline, naming the operation and instance", async () => {
    const h = hanging();
    await assert.rejects(underDeadline("stop", "web-1", 50, undefined, h.fn), (e) => {
      assert.ok(e instanceof DeadlineExceededError);
      assert.equal(e.message, "driver stop of instance web-1 did not finish within 50ms; aborted");
      return true;
    });
    assert.equal(h.signal()?.aborted, true, "the driver's signal is aborted");
  });

  it("ends with the caller's reason when the caller aborts first", async () => {
    const h = hanging();
    const parent = new AbortController();
    const p = underDeadline("create", "web-1", 3_600_000, parent.signal, h.fn);
    const why = new Error("agent stopping");
    parent.abort(why);
    await assert.rejects(p, (e) => e === why);
    assert.equal(h.signal()?.reason, why);
  });

  it("returns the driver's result and leaves no listener on the caller's signal", async () => {
    const parent = new AbortController();
    setMaxListeners(100, parent.signal); // twenty calls at once, as the agent's signal carries
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => underDeadline("inspect", `i-${i}`, 60_000, parent.signal, () => Promise.resolve(i))),
    );
    assert.deepEqual(
      results,
      Array.from({ length: 20 }, (_, i) => i),
    );
    await assert.rejects(
      underDeadline("inspect", "x", 60_000, parent.signal, () => Promise.reject(new Error("no such domain"))),
      /no such domain/,
    );
    assert.equal(getEventListeners(parent.signal, "abort").length, 0);
  });

  it("a stop's deadline is its timeout plus the margin", async () => {
    const inner = {
      name: "hang",
      stop: (_name: string, _t: number, o?: { signal?: AbortSignal }) =>
        new Promise<DriverInstance>((_, reject) => o?.signal?.addEventListener("abort", () => reject(o.signal!.reason as Error))),
    } as unknown as Driver;
    const d = new DeadlineDriver(inner, { ...DEFAULT_DEADLINES, stopMarginMs: 40 });
    await assert.rejects(d.stop("web-1", 30), (e) => e instanceof DeadlineExceededError && e.deadlineMs === 70 && e.operation === "stop");
  });
});
