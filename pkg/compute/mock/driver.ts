/*
 * The mock driver: a real Driver whose instances are JSON files and whose behaviour comes from
 * the instance's driver config (see config.ts). Scale tests run thousands of these on one machine;
 * agent tests use it to exercise adoption, exits and restart policies without a hypervisor.
 *
 * Operations on one instance are serialized (a per-name lock), so concurrent create/start/stop
 * calls see each other's result, as they would on a real runtime. Timed exits (run_for) are
 * computed from timestamps on every read; a timer per running instance only exists to emit the
 * exit event on time, and is re-armed when a new driver object recovers the state directory.
 */
import { isHostName } from "../../validation/index.js";
import { setTimeout as sleep } from "node:timers/promises";
import {
  DriverError,
  InstanceNotFoundError,
  InvalidSpecError,
  StartError,
  type Capabilities,
  type DriverEvent,
  type DriverInstance,
  type DriverInstanceSpec,
  type DriverState,
  type Fingerprint,
  type InstanceStats,
  type Signalled,
  type StatsDriver,
  DRIVER_REGISTRY,
} from "../driver/index.js";
import { parseBehaviour, type MockDriverOptions } from "./config.js";
import { fingerprintMock } from "./fingerprint.js";
import { describeHandle, exitTime, fileHandles, HANDLE_VERSION, type HandleStore, memoryHandles, type MockHandle } from "./handle.js";

export const MOCK_DRIVER_NAME = "mock";

const CAPABILITIES: Capabilities = DRIVER_REGISTRY.mock.capabilities;

// Instance names become file names: DNS-label syntax only, so no name can climb out of the
// state directory ("../x", "a/b") or collide with the temp files (leading dot).

/** Operations actually performed by this driver object (idempotent no-ops are not counted). */
export interface MockCounters {
  creates: number;
  starts: number;
  stops: number;
  destroys: number;
}

interface Subscriber {
  queue: DriverEvent[];
  wake?: () => void;
}

export class MockDriver implements StatsDriver {
  readonly name = MOCK_DRIVER_NAME;
  readonly capabilities = CAPABILITIES;
  readonly counters: MockCounters = { creates: 0, starts: 0, stops: 0, destroys: 0 };

  private readonly store: HandleStore;
  private readonly now: () => number;
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly exitTimers = new Map<string, NodeJS.Timeout>();
  private readonly subscribers = new Set<Subscriber>();
  private recovered?: Promise<void>;
  private closed = false;
  private cluster = "";

  constructor(private readonly opts: MockDriverOptions) {
    this.store = opts.stateDir === undefined ? memoryHandles() : fileHandles(opts.stateDir);
    this.now = opts.now ?? Date.now;
  }

  setCluster(id: string): void {
    this.cluster = id;
  }

  /** Marked by another cluster: as good as absent. */
  private foreign(h: MockHandle | undefined): boolean {
    return Boolean(h?.cluster && this.cluster && h.cluster !== this.cluster);
  }

  /** The handle of `name` unless another cluster's. */
  private async read(name: string): Promise<MockHandle | undefined> {
    const h = await this.store.read(name);
    return this.foreign(h) ? undefined : h;
  }

  async fingerprint(opts: Signalled = {}): Promise<Fingerprint> {
    opts.signal?.throwIfAborted();
    const count = this.recovered ? (await this.list(opts)).length : 0;
    return fingerprintMock(this.opts, count);
  }

  async create(spec: DriverInstanceSpec, opts: Signalled = {}): Promise<DriverInstance> {
    checkName(spec.name);
    if (spec.uid === "") throw new InvalidSpecError(`instance ${spec.name}: uid is required`);
    parseBehaviour(spec.name, spec.config);
    await this.recover();
    return this.locked(spec.name, opts.signal, async () => {
      const existing = await this.store.read(spec.name);
      if (existing && this.foreign(existing))
        throw new DriverError(`instance ${spec.name} exists and belongs to cluster ${existing.cluster}, not ${this.cluster}`);
      if (existing) {
        if (existing.spec.uid !== spec.uid) {
          throw new DriverError(`instance ${spec.name} already exists with uid ${existing.spec.uid}, not ${spec.uid}`);
        }
        return describeHandle(existing, this.now());
      }
      const h: MockHandle = { version: HANDLE_VERSION, spec: structuredClone(spec), createdAt: this.now(), startCount: 0 };
      if (this.cluster) h.cluster = this.cluster;
      await this.store.write(h);
      this.counters.creates++;
      return this.changed(h);
    });
  }

  async start(name: string, opts: Signalled = {}): Promise<DriverInstance> {
    checkName(name);
    await this.recover();
    return this.locked(name, opts.signal, async () => {
      const h = await this.mustRead(name);
      const current = describeHandle(h, this.now());
      if (current.state === "running") return current;
      const b = parseBehaviour(name, h.spec.config);
      if (b.startDelayMs > 0) await sleep(b.startDelayMs, undefined, { signal: opts.signal });
      if (b.startError !== undefined) {
        h.failedMessage = b.startError;
        h.failedAt = this.now();
        await this.store.write(h);
        this.changed(h);
        throw new StartError(`instance ${name}: ${b.startError}`);
      }
      h.startedAt = this.now();
      delete h.stoppedAt;
      delete h.failedMessage;
      delete h.failedAt;
      h.startCount++;
      await this.store.write(h);
      this.counters.starts++;
      return this.changed(h);
    });
  }

  async stop(name: string, timeoutMs: number, opts: Signalled = {}): Promise<DriverInstance> {
    checkName(name);
    await this.recover();
    return this.locked(name, opts.signal, async () => {
      const h = await this.mustRead(name);
      const current = describeHandle(h, this.now());
      if (current.state !== "running") return current;
      // A graceful stop that takes longer than the timeout is cut short (forced), as on a runtime.
      const delay = Math.min(parseBehaviour(name, h.spec.config).stopDelayMs, Math.max(0, timeoutMs));
      if (delay > 0) await sleep(delay, undefined, { signal: opts.signal });
      h.stoppedAt = this.now();
      await this.store.write(h);
      this.counters.stops++;
      return this.changed(h);
    });
  }

  async destroy(name: string, opts: Signalled & { force?: boolean } = {}): Promise<void> {
    checkName(name);
    await this.recover();
    await this.locked(name, opts.signal, async () => {
      const h = await this.store.read(name);
      if (!h) return;
      if (this.foreign(h))
        throw new DriverError(`instance ${name} belongs to cluster ${h.cluster}, not ${this.cluster}; not destroying it`);
      this.disarm(name);
      await this.store.remove(name);
      this.counters.destroys++;
    });
  }

  async inspect(name: string, opts: Signalled = {}): Promise<DriverInstance | undefined> {
    checkName(name);
    opts.signal?.throwIfAborted();
    await this.recover();
    const h = await this.read(name);
    return h ? describeHandle(h, this.now()) : undefined;
  }

  async list(opts: Signalled = {}): Promise<DriverInstance[]> {
    opts.signal?.throwIfAborted();
    await this.recover();
    return (await this.handles()).filter((h) => !this.foreign(h)).map((h) => describeHandle(h, this.now()));
  }

  async stats(name: string, opts: Signalled = {}): Promise<InstanceStats> {
    const inst = await this.inspect(name, opts);
    if (!inst) throw new InstanceNotFoundError(name);
    const h = await this.mustRead(name);
    const limit = h.spec.memoryMiB * 1024 * 1024;
    if (inst.state !== "running" || inst.startedAt === undefined) return { cpuTimeNs: 0, memoryUsedBytes: 0, memoryLimitBytes: limit };
    // Synthetic but plausible: 1% of one CPU since start, half the memory in use.
    return { cpuTimeNs: Math.round((this.now() - inst.startedAt) * 1e4), memoryUsedBytes: Math.floor(limit / 2), memoryLimitBytes: limit };
  }

  async *events(opts: Required<Signalled>): AsyncIterable<DriverEvent> {
    const { signal } = opts;
    await this.recover();
    const sub: Subscriber = { queue: [] };
    const onAbort = () => sub.wake?.();
    this.subscribers.add(sub);
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      while (!signal.aborted && !this.closed) {
        const next = sub.queue.shift();
        if (next) {
          yield next;
          continue;
        }
        await new Promise<void>((resolve) => (sub.wake = resolve));
        sub.wake = undefined;
      }
    } finally {
      this.subscribers.delete(sub);
      signal.removeEventListener("abort", onAbort);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.exitTimers.values()) clearTimeout(t);
    this.exitTimers.clear();
    for (const s of this.subscribers) s.wake?.();
  }

  /** Creates the state directory and re-arms exit timers of instances found there (once). */
  private recover(): Promise<void> {
    if (this.closed) return Promise.reject(new DriverError("mock driver is closed"));
    this.recovered ??= (async () => {
      await this.store.open();
      for (const h of await this.handles()) this.arm(h);
    })();
    return this.recovered;
  }

  private async handles(): Promise<MockHandle[]> {
    const names = await this.store.names();
    const out: MockHandle[] = [];
    for (const n of names.sort()) {
      const h = await this.store.read(n); // may have been destroyed since it was listed
      if (h) out.push(h);
    }
    return out;
  }

  private async mustRead(name: string): Promise<MockHandle> {
    const h = await this.read(name);
    if (!h) throw new InstanceNotFoundError(name);
    return h;
  }

  /** Runs fn after every earlier operation on the same instance has settled. */
  private async locked<T>(name: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(name) ?? Promise.resolve();
    const run = prev.then(
      () => (signal?.throwIfAborted(), fn()),
      () => (signal?.throwIfAborted(), fn()),
    );
    const tail = run.catch(() => undefined);
    this.locks.set(name, tail);
    void tail.then(() => {
      if (this.locks.get(name) === tail) this.locks.delete(name);
    });
    return run;
  }

  /** Publishes the new state of h and (re-)arms its exit timer. */
  private changed(h: MockHandle): DriverInstance {
    const inst = describeHandle(h, this.now());
    this.arm(h);
    this.emit(inst.name, inst.uid, inst.state, inst.exitCode, inst.message);
    return inst;
  }

  private arm(h: MockHandle): void {
    const name = h.spec.name;
    this.disarm(name);
    const at = exitTime(h);
    if (at === undefined || this.closed) return;
    const startedAt = h.startedAt;
    const t = setTimeout(
      () => {
        this.exitTimers.delete(name);
        // Re-read: the instance may have been stopped, restarted or destroyed meanwhile.
        void this.store
          .read(name)
          .then((cur) => {
            if (!cur || cur.startedAt !== startedAt) return;
            const inst = describeHandle(cur, Math.max(this.now(), at));
            if (inst.state === "exited") this.emit(name, inst.uid, "exited", inst.exitCode);
          })
          .catch(() => undefined);
      },
      Math.max(0, at - this.now()),
    );
    t.unref(); // an armed exit must not keep a process alive
    this.exitTimers.set(name, t);
  }

  private disarm(name: string): void {
    const t = this.exitTimers.get(name);
    if (t) clearTimeout(t);
    this.exitTimers.delete(name);
  }

  private emit(name: string, uid: string, state: DriverState, exitCode?: number, message?: string): void {
    const ev: DriverEvent = { name, uid, state, time: this.now() };
    if (exitCode !== undefined) ev.exitCode = exitCode;
    if (message !== undefined) ev.message = message;
    for (const s of this.subscribers) {
      s.queue.push(ev);
      s.wake?.();
    }
  }
}

function checkName(name: string): void {
  if (!isHostName(name)) {
    throw new InvalidSpecError(
      `instance name ${JSON.stringify(name)} is not an instance's name on a node ("<name>" or "<project>.<name>")`,
    );
  }
}

/** A mock driver keeping its state in opts.stateDir (or in memory without one). */
export function createMockDriver(opts: MockDriverOptions): MockDriver {
  return new MockDriver(opts) satisfies StatsDriver;
}
