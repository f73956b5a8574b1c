/*
 * Value parsers for commander options. They throw commander's InvalidArgumentError so a bad value
 * is reported like any other usage error (exit 2), naming the flag and the value.
 */
import { InvalidArgumentError } from "commander";
import { Phase, RestartPolicy } from "../../api/gen/hypervisor/v1/instance_pb.js";

/** Accumulates repeated `--flag k=v` into one map; a later repeat of a key wins. */
export function keyValue(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const eq = value.indexOf("=");
  if (eq <= 0) throw new InvalidArgumentError(`expected key=value, got "${value}"`);
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

/** A label selector "k=v,k2=v2", checked here so a typo is a usage error, not a round trip. */
export function selector(value: string): string {
  for (const part of value.split(",")) {
    if (part.trim().indexOf("=") <= 0) throw new InvalidArgumentError(`expected k=v[,k=v...], got "${value}"`);
  }
  return value;
}

export function positiveInt(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`expected a non-negative integer, got "${value}"`);
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`number too large: "${value}"`);
  return n;
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "120s", "2m", "1m30s", "500ms"; a bare number means seconds. Returns milliseconds. */
export function duration(value: string): number {
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let end = 0;
  for (let m = re.exec(value); m; m = re.exec(value)) {
    total += Number(m[1]) * UNITS[m[2]!]!;
    end = re.lastIndex;
  }
  if (value === "" || end !== value.length) throw new InvalidArgumentError(`expected a duration like 90s, 2m or 1m30s, got "${value}"`);
  return total;
}

/** Human form of a duration for messages ("2m0s"), the inverse of `duration` for whole seconds. */
export function showDuration(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${m}m${s % 60}s` : `${m}m${s % 60}s`;
}

/** An enum value by its short name in any case and with '-' for '_': "on-failure", "RUNNING". */
function enumValue<E extends Record<string, string | number>>(e: E, prefix: string, what: string, value: string): E[keyof E] {
  const key = value
    .toUpperCase()
    .replace(/-/g, "_")
    .replace(new RegExp(`^${prefix}`), "");
  const n = e[key];
  if (typeof n !== "number" || key === "UNSPECIFIED") {
    const names = Object.keys(e)
      .filter((k) => Number.isNaN(Number(k)) && k !== "UNSPECIFIED")
      .map((k) => k.toLowerCase().replace(/_/g, "-"));
    throw new InvalidArgumentError(`unknown ${what} "${value}" (one of ${names.join(", ")})`);
  }
  return n as E[keyof E];
}

export function phase(value: string): Phase {
  return enumValue(Phase, "PHASE_", "phase", value);
}

export function restartPolicy(value: string): RestartPolicy {
  return enumValue(RestartPolicy, "RESTART_POLICY_", "restart policy", value);
}

/** Memory in MiB: "512", "512Mi", "2Gi", "1Ti". */
export function memoryMib(value: string): bigint {
  const m = /^(\d+)(Mi|Gi|Ti)?$/.exec(value);
  if (!m) throw new InvalidArgumentError(`expected MiB or a quantity like 512Mi or 2Gi, got "${value}"`);
  return BigInt(m[1]!) * ({ Mi: 1n, Gi: 1024n, Ti: 1024n * 1024n }[m[2] ?? "Mi"] ?? 1n);
}

/** Disk in GiB: "20", "20Gi", "1Ti". */
export function diskGib(value: string): bigint {
  const m = /^(\d+)(Gi|Ti)?$/.exec(value);
  if (!m) throw new InvalidArgumentError(`expected GiB or a quantity like 20Gi or 1Ti, got "${value}"`);
  return BigInt(m[1]!) * (m[2] === "Ti" ? 1024n : 1n);
}

/** Lowercase short names, for --phase choices and shell completion. */
export const PHASES = Object.keys(Phase)
  .filter((k) => Number.isNaN(Number(k)) && k !== "UNSPECIFIED")
  .map((k) => k.toLowerCase());

export const RESTART_POLICIES = ["never", "on-failure", "always"] as const;
