/*
 * Deadlines for the driver operations the agent runs. A node must not trust the store to bound
 * them (a stop timeout there can say 4,294,967,295 s), nor a runtime to answer: every call gets an
 * AbortSignal that aborts at its deadline, and the agent takes its worker back at that moment even
 * if a driver does not honour the signal.
 *
 *   caller's signal ──┐
 *                     ├─► driver.op(…, { signal }) ──► result
 *   deadline timer ───┘        │
 *                              └─ aborted: rejects at once with the reason (DeadlineExceededError
 *                                 at the deadline, the caller's reason otherwise)
 *
 * A stop's deadline is its timeout (clamped by the reconciler to maxStopTimeoutMs) plus a margin
 * for the forced part: the driver's own timeout, not ours, decides when to force.
 */
import type {
  BalloonDriver,
  ConsoleDriver,
  ConsoleEndpoint,
  ConsoleKind,
  Driver,
  DriverEvent,
  DriverImage,
  DriverInstance,
  DriverInstanceSpec,
  Fingerprint,
  ImageDriver,
  InstanceStats,
  LogsDriver,
  Signalled,
  StatsDriver,
} from "../../pkg/compute/driver/index.js";
import type { Logger } from "../../pkg/log/index.js";

/** How long each kind of driver operation may take (configs/agent.yaml documents the defaults). */
export interface OperationDeadlines {
  createMs: number;
  startMs: number;
  /** Added to a stop's timeout: the forced part (SIGKILL, virDomainDestroy) and its wait. */
  stopMarginMs: number;
  destroyMs: number;
  /** inspect, list, stats, fingerprint. */
  queryMs: number;
  /** setMemory (balloon). */
  balloonMs: number;
}

export const DEFAULT_DEADLINES: OperationDeadlines = {
  createMs: 300_000,
  startMs: 120_000,
  stopMarginMs: 60_000,
  destroyMs: 120_000,
  queryMs: 30_000,
  balloonMs: 60_000,
};

/** Longest stop timeout the agent honours, whatever the store says (an hour). */
export const DEFAULT_MAX_STOP_TIMEOUT_MS = 3_600_000;

/** setTimeout's limit: a longer delay fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A driver operation ran past its deadline; it was aborted. */
export class DeadlineExceededError extends Error {
  override name = "DeadlineExceededError";
  constructor(
    readonly operation: string,
    readonly instance: string,
    readonly deadlineMs: number,
  ) {
    super(`driver ${operation}${instance ? ` of instance ${instance}` : ""} did not finish within ${formatMs(deadlineMs)}; aborted`);
  }
}

function formatMs(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/**
 * Runs fn with a signal that aborts at `ms` or when `parent` aborts, whichever is first, and
 * settles no later than that abort. A driver that goes on after it is left to finish on its own
 * (its result is dropped, and logged).
 */
export function underDeadline<T>(
  operation: string,
  instance: string,
  ms: number,
  parent: AbortSignal | undefined,
  fn: (signal: AbortSignal) => Promise<T>,
  log?: Logger,
): Promise<T> {
  // A controller of our own rather than AbortSignal.any: its listener on the agent's long-lived
  // signal is removed when the call settles, so nothing accumulates on it.
  const ctl = new AbortController();
  const onParent = () => ctl.abort(parent?.reason);
  if (parent?.aborted) onParent();
  else parent?.addEventListener("abort", onParent, { once: true });
  const timer = setTimeout(() => ctl.abort(new DeadlineExceededError(operation, instance, ms)), Math.min(Math.max(0, ms), MAX_TIMER_MS));
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const finish = () => {
      settled = true;
      clearTimeout(timer);
      parent?.removeEventListener("abort", onParent);
      ctl.signal.removeEventListener("abort", onAbort);
    };
    const onAbort = () => {
      if (settled) return;
      finish();
      reject(ctl.signal.reason as Error);
    };
    if (ctl.signal.aborted) return onAbort();
    ctl.signal.addEventListener("abort", onAbort, { once: true });
    let p: Promise<T>;
    try {
      p = fn(ctl.signal);
    } catch (e) {
      finish();
      return reject(asError(e));
    }
    p.then(
      (v) => {
        if (settled) return void log?.warn({ operation, instance }, "driver finished an operation after it was aborted");
        finish();
        resolve(v);
      },
      (e: unknown) => {
        if (settled) return;
        finish();
        reject(asError(e));
      },
    );
  });
}

/**
 * A driver whose every operation runs under its deadline: what the reconciler drives. Optional
 * features pass through (the guards read the same capabilities); events() is a stream, bounded
 * by its caller's signal only.
 */
export class DeadlineDriver implements StatsDriver, BalloonDriver, ConsoleDriver, LogsDriver, ImageDriver {
  constructor(
    readonly inner: Driver,
    private readonly deadlines: OperationDeadlines,
    private readonly log?: Logger,
  ) {}

  get name(): string {
    return this.inner.name;
  }

  get capabilities(): Driver["capabilities"] {
    return this.inner.capabilities;
  }

  // Not driver calls: what the wrapped driver says of itself, passed through as it is.
  get hostAccess(): Driver["hostAccess"] {
    return this.inner.hostAccess;
  }

  setCluster(id: string): void {
    this.inner.setCluster(id);
  }

  fingerprint(o: Signalled = {}): Promise<Fingerprint> {
    return this.run("fingerprint", "", this.deadlines.queryMs, o, (signal) => this.inner.fingerprint({ signal }));
  }

  create(spec: DriverInstanceSpec, o: Signalled = {}): Promise<DriverInstance> {
    return this.run("create", spec.name, this.deadlines.createMs, o, (signal) => this.inner.create(spec, { signal }));
  }

  start(name: string, o: Signalled = {}): Promise<DriverInstance> {
    return this.run("start", name, this.deadlines.startMs, o, (signal) => this.inner.start(name, { signal }));
  }

  stop(name: string, timeoutMs: number, o: Signalled = {}): Promise<DriverInstance> {
    const ms = Math.max(0, timeoutMs) + this.deadlines.stopMarginMs;
    return this.run("stop", name, ms, o, (signal) => this.inner.stop(name, timeoutMs, { signal }));
  }

  destroy(name: string, o: Signalled & { force?: boolean } = {}): Promise<void> {
    const force = o.force;
    return this.run("destroy", name, this.deadlines.destroyMs, o, (signal) =>
      this.inner.destroy(name, force === undefined ? { signal } : { signal, force }),
    );
  }

  inspect(name: string, o: Signalled = {}): Promise<DriverInstance | undefined> {
    return this.run("inspect", name, this.deadlines.queryMs, o, (signal) => this.inner.inspect(name, { signal }));
  }

  list(o: Signalled = {}): Promise<DriverInstance[]> {
    return this.run("list", "", this.deadlines.queryMs, o, (signal) => this.inner.list({ signal }));
  }

  events(o: Required<Signalled>): AsyncIterable<DriverEvent> {
    return this.inner.events(o);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  // Optional features: reached only through the has* guards, which read inner's capabilities.

  stats(name: string, o: Signalled = {}): Promise<InstanceStats> {
    return this.run("stats", name, this.deadlines.queryMs, o, (signal) => (this.inner as StatsDriver).stats(name, { signal }));
  }

  setMemory(name: string, memoryMiB: number, o: Signalled = {}): Promise<void> {
    return this.run("setMemory", name, this.deadlines.balloonMs, o, (signal) =>
      (this.inner as BalloonDriver).setMemory(name, memoryMiB, { signal }),
    );
  }

  console(name: string, kind: ConsoleKind, o: Signalled = {}): Promise<ConsoleEndpoint> {
    return this.run("console", name, this.deadlines.queryMs, o, (signal) => (this.inner as ConsoleDriver).console(name, kind, { signal }));
  }

  logFile(name: string): string {
    return (this.inner as LogsDriver).logFile(name);
  }

  /** No deadline: an import's length depends on the image; its caller bounds it. */
  importImage(file: string, o: Signalled = {}): Promise<DriverImage[]> {
    return (this.inner as ImageDriver).importImage(file, o);
  }

  listImages(o: Signalled = {}): Promise<DriverImage[]> {
    return this.run("listImages", "", this.deadlines.queryMs, o, (signal) => (this.inner as ImageDriver).listImages({ signal }));
  }

  private run<T>(op: string, instance: string, ms: number, o: Signalled, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    return underDeadline(op, instance, ms, o.signal, fn, this.log);
  }
}

function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}
