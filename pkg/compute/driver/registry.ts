/*
 * The driver registry: the one place that names the drivers this platform has, and what each
 * takes in a spec (Nomad declares a driver's config schema and capabilities at the top of its
 * plugin; this is that, for all of them, importable without loading a driver).
 *
 *   registry ──► server: checks a spec at the API (InvalidArgument naming the field), ListDrivers
 *            ├─► agent: the drivers it can run (--drivers), their capabilities and config keys
 *            ├─► ctl: help texts
 *            └─► UI: through ListDrivers
 *
 * Pure data and string checks, no Node-only imports, so any side (browser included) can load it.
 * A driver's own create() still refuses what it cannot run; this catches it before anything is
 * stored. Values a node may refuse by its own policy (containerd's network=host, libvirt's
 * bridge:<name>) are only checked for their form here.
 */
import type { Capabilities } from "./driver.js";

/** Optional spec fields that only some drivers take. */
export type SpecField = "image" | "kernel" | "initrd" | "cmdline" | "command" | "args" | "env" | "secret_env";
export const SPEC_FIELDS: readonly SpecField[] = ["image", "kernel", "initrd", "cmdline", "command", "args", "env", "secret_env"];

export interface ConfigKey {
  readonly name: string;
  readonly description: string;
  /** The values taken, in words (shown in errors, ListDrivers and help). */
  readonly values: string;
  /** True when `value` is one of them. */
  accepts(value: string): boolean;
}

export interface DriverEntry {
  readonly name: string;
  readonly description: string;
  readonly kind: "vm" | "container" | "simulated";
  readonly capabilities: Capabilities;
  /** Optional fields it takes; a spec setting another is refused. */
  readonly specFields: readonly SpecField[];
  /** Each group needs at least one of its fields set. */
  readonly required: readonly (readonly SpecField[])[];
  /** A field that is meaningless without another (initrd without kernel). */
  readonly needs: Readonly<Partial<Record<SpecField, SpecField>>>;
  /** Why the fields it does not take are refused, in a few words. */
  readonly refusedBecause: string;
  readonly configKeys: readonly ConfigKey[];
}

/** Linux interface names: at most 15 bytes (IFNAMSIZ - 1) of a conservative alphabet. */
export const BRIDGE_NAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;
/** Go-style durations: "500ms", "10s", "1m30s", "1.5h". */
export const DURATION_RE = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$/;

const NO_CAPABILITIES: Capabilities = {
  console: false,
  balloon: false,
  stats: false,
  snapshot: false,
  migrate: false,
  logs: false,
  images: false,
};

const libvirt: DriverEntry = {
  name: "libvirt",
  description: "virtual machines: QEMU through libvirt, booting a disk image or a kernel",
  kind: "vm",
  capabilities: { ...NO_CAPABILITIES, console: true, balloon: true, stats: true, logs: true },
  specFields: ["image", "kernel", "initrd", "cmdline"],
  required: [["image", "kernel"]],
  needs: { initrd: "kernel", cmdline: "kernel" },
  refusedBecause: "command, args, env and secret_env are for containers; a VM boots a disk image or a kernel",
  configKeys: [
    {
      name: "network",
      description: "the VM's network: user-mode NAT, none, or a host bridge (the node must allow it)",
      values: "user, none or bridge:<name>",
      accepts: (v) => v === "user" || v === "none" || (v.startsWith("bridge:") && BRIDGE_NAME_RE.test(v.slice("bridge:".length))),
    },
  ],
};

const containerd: DriverEntry = {
  name: "containerd",
  description: "containers: runc through containerd, from an OCI image on the node",
  kind: "container",
  capabilities: { ...NO_CAPABILITIES, stats: true, logs: true, images: true },
  specFields: ["image", "command", "args", "env", "secret_env"],
  required: [["image"]],
  needs: {},
  refusedBecause: "kernel, initrd and cmdline are for VMs; a container runs an image",
  configKeys: [
    {
      name: "network",
      description: "the container's network: its own namespace with loopback only, or the host's (the node must allow it)",
      values: "none or host",
      accepts: (v) => v === "none" || v === "host",
    },
    {
      name: "pids-limit",
      description: "the most processes the container may have; the node's containerd-pids-limit is the ceiling",
      values: "an integer from 1 to 4194304",
      accepts: (v) => /^[1-9]\d{0,6}$/.test(v) && Number(v) <= 4194304,
    },
  ],
};

const duration = (name: string, description: string): ConfigKey => ({
  name,
  description,
  values: 'a duration like "500ms", "10s" or "1m30s"',
  accepts: (v) => DURATION_RE.test(v),
});

const mock: DriverEntry = {
  name: "mock",
  description: "simulated instances for tests and scale benchmarks; behaviour from driver_config",
  kind: "simulated",
  capabilities: { ...NO_CAPABILITIES, stats: true },
  specFields: SPEC_FIELDS,
  required: [],
  needs: {},
  refusedBecause: "",
  configKeys: [
    duration("run_for", "exits on its own this long after each start (absent: runs until stopped)"),
    {
      name: "exit_code",
      description: "the exit code of that exit (default 0)",
      values: "an integer from -255 to 255",
      accepts: (v) => /^-?\d{1,3}$/.test(v) && Math.abs(Number(v)) <= 255,
    },
    { name: "start_error", description: "every start fails with this message", values: "any text", accepts: () => true },
    duration("start_delay", "start takes this long"),
    duration("stop_delay", "a graceful stop takes this long (cut short by the stop timeout)"),
    {
      name: "local_disk",
      description: "reports a disk only its node holds, as a libvirt VM's overlay (for data-safety tests)",
      values: "true or false",
      accepts: (v) => v === "true" || v === "false",
    },
  ],
};

/** Every driver, by name. A driver that is not here cannot be named in a spec or an agent config. */
export const DRIVER_REGISTRY = { containerd, libvirt, mock } as const satisfies Record<string, DriverEntry>;

export type DriverName = keyof typeof DRIVER_REGISTRY;
export const DRIVER_NAMES = Object.keys(DRIVER_REGISTRY).sort() as DriverName[];

export function driverEntry(name: string): DriverEntry | undefined {
  return Object.hasOwn(DRIVER_REGISTRY, name) ? DRIVER_REGISTRY[name as DriverName] : undefined;
}

/** The fields of a spec the registry looks at (InstanceSpec has them, with these names). */
export interface SpecShape {
  image: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  command: readonly string[];
  args: readonly string[];
  env: Readonly<Record<string, string>>;
  secretEnv: Readonly<Record<string, string>>;
  driverConfig: Readonly<Record<string, string>>;
}

/** A field path in API (proto) names, and what is wrong with it. */
export interface SpecProblem {
  field: string;
  message: string;
}

function isSet(spec: SpecShape, f: SpecField): boolean {
  const v = f === "secret_env" ? spec.secretEnv : spec[f];
  return typeof v === "string" ? v !== "" : Array.isArray(v) ? v.length > 0 : Object.keys(v).length > 0;
}

function quote(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
}

/** The first thing `driver` would refuse in `spec`, or undefined. */
export function checkDriverSpec(driver: DriverEntry, spec: SpecShape): SpecProblem | undefined {
  for (const f of SPEC_FIELDS)
    if (isSet(spec, f) && !driver.specFields.includes(f))
      return { field: `spec.${f}`, message: `the ${driver.name} driver does not take ${f}: ${driver.refusedBecause}` };
  for (const group of driver.required)
    if (!group.some((f) => isSet(spec, f)))
      return {
        field: `spec.${group[0]}`,
        message:
          group.length === 1
            ? `is required for the ${driver.name} driver`
            : `the ${driver.name} driver needs ${group.join(" or ")}, and none is set`,
      };
  for (const [f, needed] of Object.entries(driver.needs) as [SpecField, SpecField][])
    if (isSet(spec, f) && !isSet(spec, needed))
      return { field: `spec.${f}`, message: `needs spec.${needed} with the ${driver.name} driver` };
  for (const [k, v] of Object.entries(spec.driverConfig)) {
    const key = driver.configKeys.find((c) => c.name === k);
    const field = `spec.driver_config[${quote(k)}]`;
    if (!key)
      return {
        field,
        message: `unknown key for the ${driver.name} driver (known: ${driver.configKeys.map((c) => c.name).join(", ") || "none"})`,
      };
    if (!key.accepts(v)) return { field, message: `${quote(v)} is not ${key.values}` };
  }
  return undefined;
}
