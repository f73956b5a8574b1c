/*
 * The loop every controller runs: sleep until kicked (an informer changed) or until the period
 * passes, then run one pass. A pass that returns true ("run me again", e.g. after a lost compare)
 * is retried after a short pause so a stale copy has time to catch up instead of spinning.
 */
import type { Logger } from "../../pkg/log/index.js";
import { sleep, sleepUntilWoken } from "./informer.js";

export interface KickedLoop {
  kick: () => void;
  run: (signal: AbortSignal) => Promise<void>;
}

/**
 * `minIntervalMs`: at least this long from one pass's start to the next, however often it is
 * kicked; for controllers whose pass walks every node, which a burst of events (thousands of
 * leases changing) would otherwise run back to back.
 */
export function kickedLoop(pass: (signal: AbortSignal) => Promise<boolean>, periodMs: number, log: Logger, minIntervalMs = 0): KickedLoop {
  let dirty = true;
  let lastStart = -Infinity;
  let wake: (() => void) | undefined;
  const kick = () => {
    dirty = true;
    wake?.();
  };
  return {
    kick,
    async run(signal) {
      while (!signal.aborted) {
        if (!dirty) {
          await sleepUntilWoken(periodMs, signal, (w) => (wake = w));
          dirty = true; // the period passed: run anyway, a safety net for anything missed
          continue;
        }
        dirty = false;
        const wait = lastStart + minIntervalMs - performance.now();
        if (wait > 0) await sleep(wait, signal);
        if (signal.aborted) break;
        lastStart = performance.now();
        try {
          if (await pass(signal)) {
            dirty = true;
            await sleep(50, signal);
          }
        } catch (e) {
          if (signal.aborted) break;
          log.warn({ err: e }, "controller pass failed; retrying");
          dirty = true;
          await sleep(500, signal);
        }
      }
    },
  };
}
