/*
 * Runtimes' events say which instance changed, not reliably what it now is (events can be missed
 * across a reconnect, or arrive out of order). Drivers therefore turn each event into "look
 * again": the instance is inspected and its current state becomes the DriverEvent.
 */
import type { DriverEvent, DriverInstance } from "./driver.js";

/**
 * Yields a DriverEvent for every name `subscribe` reports, from `inspect` at the time it is
 * handled, until `signal` aborts. Names of instances that are not there (any more) are skipped.
 * `subscribe` registers the listener and returns its removal.
 */
export async function* lookAgain(
  subscribe: (onName: (name: string) => void) => () => void,
  inspect: (name: string) => Promise<DriverInstance | undefined>,
  signal: AbortSignal,
): AsyncIterable<DriverEvent> {
  const queue: string[] = [];
  let wake: (() => void) | undefined;
  const unsubscribe = subscribe((name) => {
    queue.push(name);
    wake?.();
  });
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    while (!signal.aborted) {
      const name = queue.shift();
      if (name === undefined) {
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
        continue;
      }
      const i = await inspect(name).catch(() => undefined);
      if (!i) continue;
      const ev: DriverEvent = { name, uid: i.uid, state: i.state, time: Date.now() };
      if (i.exitCode !== undefined) ev.exitCode = i.exitCode;
      if (i.message !== undefined) ev.message = i.message;
      yield ev;
    }
  } finally {
    unsubscribe();
    signal.removeEventListener("abort", onAbort);
  }
}
