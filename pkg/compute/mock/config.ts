/*
 * What a mock instance does, read from its spec's driver config (Nomad's drivers/mock keys):
 *
 *   run_for      "10s"  exits on its own this long after each start (absent: runs until stopped)
 *   exit_code    "3"    the exit code of that exit (default 0)
 *   start_error  "boom" every start fails with this message
 *   start_delay  "2s"   start takes this long
 *   stop_delay   "1s"   a graceful stop takes this long (cut short by the stop timeout)
 *   local_disk   "true" reports a disk only its node holds (as a libvirt VM's overlay), for tests
 *                       of what the agent must never delete unasked
 *
 * Unknown keys are rejected so a typo is not silently a no-op.
 */
import { DRIVER_REGISTRY, InvalidSpecError } from "../driver/index.js";

export interface MockBehaviour {
  runForMs?: number;
  exitCode: number;
  startError?: string;
  startDelayMs: number;
  stopDelayMs: number;
  localDisk: boolean;
}

export interface MockDriverOptions {
  /**
   * Directory holding one JSON file per instance; created if missing. Absent: instances live in
   * the driver object's memory only (the scale bench's simulated nodes), so nothing is adopted
   * after a restart.
   */
  stateDir?: string;
  /** Capacity to report in the fingerprint attributes (simulated nodes in scale tests). */
  capacity?: { vcpus?: number; memoryMiB?: number };
  /** Clock, for tests that want to move time; default Date.now. */
  now?: () => number;
}

const KNOWN_KEYS = new Set(DRIVER_REGISTRY.mock.configKeys.map((k) => k.name));

export function parseBehaviour(name: string, config: Record<string, string>): MockBehaviour {
  for (const k of Object.keys(config)) {
    if (!KNOWN_KEYS.has(k))
      throw new InvalidSpecError(`instance ${name}: unknown mock config key ${JSON.stringify(k)} (known: ${[...KNOWN_KEYS].join(", ")})`);
  }
  const b: MockBehaviour = { exitCode: 0, startDelayMs: 0, stopDelayMs: 0, localDisk: false };
  if (config.local_disk !== undefined) {
    if (config.local_disk !== "true" && config.local_disk !== "false")
      throw new InvalidSpecError(`instance ${name}: local_disk ${JSON.stringify(config.local_disk)} must be true or false`);
    b.localDisk = config.local_disk === "true";
  }
  if (config.run_for !== undefined) b.runForMs = parseDuration(name, "run_for", config.run_for);
  if (config.exit_code !== undefined) {
    const v = config.exit_code;
    if (!/^-?\d+$/.test(v) || Number(v) < -255 || Number(v) > 255) {
      throw new InvalidSpecError(`instance ${name}: exit_code ${JSON.stringify(v)} is not an integer between -255 and 255`);
    }
    b.exitCode = Number(v);
  }
  if (config.start_error !== undefined && config.start_error !== "") b.startError = config.start_error;
  if (config.start_delay !== undefined) b.startDelayMs = parseDuration(name, "start_delay", config.start_delay);
  if (config.stop_delay !== undefined) b.stopDelayMs = parseDuration(name, "stop_delay", config.stop_delay);
  return b;
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Go-style durations: "500ms", "10s", "1m30s", "1.5h". */
export function parseDuration(name: string, key: string, value: string): number {
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(value); m; m = re.exec(value)) {
    total += Number(m[1]) * (UNIT_MS[m[2]!] ?? 0);
    matched = re.lastIndex;
  }
  if (value === "" || matched !== value.length) {
    throw new InvalidSpecError(`instance ${name}: ${key} ${JSON.stringify(value)} is not a duration like "500ms", "10s" or "1m30s"`);
  }
  return Math.round(total);
}
