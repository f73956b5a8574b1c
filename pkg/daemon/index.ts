/*
 * What every daemon's main does around its real work: load settings, answer --help, turn a
 * ConfigError into exit code 2 with one line on stderr, and make SIGINT/SIGTERM abort a signal
 * (a second signal exits at once with 130, so a stuck shutdown never traps the operator).
 */
import { ConfigError, type Loaded, loadConfig, type Schema, usage } from "../config/index.js";

export interface DaemonInfo<S extends Schema> {
  name: string;
  about: string;
  schema: S;
  /** The daemon itself: returns the exit code once `signal` aborts (or on failure). A ConfigError
   *  it throws (a setting only it can check) also exits 2. */
  run: (loaded: Loaded<S>, signal: AbortSignal) => Promise<number>;
}

export async function runDaemon<S extends Schema>(d: DaemonInfo<S>, argv = process.argv.slice(2)): Promise<void> {
  const { signal, dispose } = abortOnSignals();
  try {
    let loaded: Loaded<S>;
    try {
      loaded = await loadConfig(d.schema, { argv });
      if (loaded.help) {
        process.stdout.write(usage(d.schema, d.name, d.about) + "\n");
        process.exitCode = 0;
        return;
      }
      process.exitCode = await d.run(loaded, signal);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      process.stderr.write(`${d.name}: ${e.message}\n`);
      process.exitCode = 2;
    }
  } finally {
    dispose();
  }
}

/**
 * A signal aborted by the first SIGINT or SIGTERM; a second one exits at once with 130.
 * dispose() removes the handlers.
 */
export function abortOnSignals(): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onSignal = (): void => {
    if (controller.signal.aborted) process.exit(130);
    controller.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  return {
    signal: controller.signal,
    dispose: () => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    },
  };
}

/** Resolves when the signal aborts. */
export function untilAborted(signal: AbortSignal): Promise<void> {
  return new Promise((done) => (signal.aborted ? done() : signal.addEventListener("abort", () => done(), { once: true })));
}
