/*
 * Automatic reconnection after an unexpected disconnect: exponential backoff with jitter (1 s, 2 s,
 * 4 s … 30 s), back to the start once a connection succeeds. A final failure (no such instance)
 * stops it; the Reconnect button connects at once whatever the state.
 *
 *   connected ──lost──► wait backoff(n) ──► connect ──ok──► connected (n = 0)
 *                            ▲                 │
 *                            └──── fails, n+1 ─┘        final failure ──► stay disconnected
 */
import type { ConsoleState } from "../../../control_and_manage_plane/src/console/ticket.js";

export interface RetryOptions {
  connect(): void;
  /** The state to show, with the time of the next attempt when one is scheduled. */
  show(state: ConsoleState, nextAttemptAt?: number): void;
  initialMs?: number;
  maxMs?: number;
}

export class Retry {
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly opts: RetryOptions) {}

  /** Connects now, cancelling a scheduled attempt. */
  now(): void {
    this.cancel();
    this.opts.connect();
  }

  /** Feeds a session's state changes; schedules the next attempt after a disconnect. */
  observe(state: ConsoleState): void {
    if (state.phase === "connected") this.attempt = 0;
    if (state.phase !== "disconnected" || state.final) {
      this.opts.show(state);
      return;
    }
    const base = Math.min(this.opts.maxMs ?? 30_000, (this.opts.initialMs ?? 1000) * 2 ** this.attempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt++;
    this.cancel();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.opts.connect();
    }, delay);
    this.opts.show(state, Date.now() + delay);
  }

  cancel(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
