/*
 * The OCI runtime spec (config.json for runc) of an instance: ctr's defaults for a Linux
 * container (masked paths, the usual /proc /dev /sys mounts), the image's config (entrypoint, cmd,
 * env, working dir, user) under the instance spec's command, args and env, and the instance's CPU,
 * memory and process count as cgroup limits.
 * Confinement, as Docker's defaults but without CAP_NET_RAW (no raw sockets: no ARP or ICMP
 * spoofing towards the host or other containers): runc's default capability set minus NET_RAW,
 * no-new-privileges (setuid binaries and file capabilities grant nothing), the default seccomp
 * profile (./seccomp.ts), and a pids limit so a fork bomb stays inside its container.
 */
import { InvalidSpecError, type DriverInstanceSpec } from "../driver/index.js";
import type { ImageConfig } from "./images.js";
import { defaultSeccompProfile } from "./seccomp.js";

export const OCI_VERSION = "1.0.2-dev";
const DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** runc's default set without CAP_NET_RAW. Ambient and inheritable stay empty. */
export const CAPABILITIES = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_FSETID",
  "CAP_FOWNER",
  "CAP_MKNOD",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETFCAP",
  "CAP_SETPCAP",
  "CAP_NET_BIND_SERVICE",
  "CAP_SYS_CHROOT",
  "CAP_KILL",
  "CAP_AUDIT_WRITE",
];
/** CFS period; the quota is vCPUs × this. */
const CPU_PERIOD = 100_000;
const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

export type NetworkMode = "none" | "host";

export interface SpecParams {
  spec: DriverInstanceSpec;
  image: ImageConfig;
  /** cgroup path, e.g. /hypervisor-web-1. */
  cgroupsPath: string;
  network: NetworkMode;
  /** Most processes (and threads) the container may have at once: its cgroup's pids.max. */
  pidsLimit: number;
}

/** The process the container runs: the spec's command replaces the image's entrypoint, args its cmd. */
export function processArgs(spec: DriverInstanceSpec, image: ImageConfig): string[] {
  const entrypoint = spec.command.length ? spec.command : (image.Entrypoint ?? []);
  // As with docker run: a command given without args drops the image's cmd too.
  const cmd = spec.args.length ? spec.args : spec.command.length ? [] : (image.Cmd ?? []);
  const argv = [...entrypoint, ...cmd];
  if (!argv.length || argv[0] === "")
    throw new InvalidSpecError("command: empty, and the image names no entrypoint or cmd; give the container something to run");
  for (const a of argv) if (a.includes("\0")) throw new InvalidSpecError("command/args: a NUL byte cannot be part of an argument");
  return argv;
}

function user(image: ImageConfig): { uid: number; gid: number } {
  const u = image.User ?? "";
  if (u === "" || u === "root" || u === "0" || u === "0:0") return { uid: 0, gid: 0 };
  const m = /^(\d+)(?::(\d+))?$/.exec(u);
  if (!m) throw new InvalidSpecError(`image: user ${JSON.stringify(u)} is a name; only numeric users (uid[:gid]) are supported so far`);
  return { uid: Number(m[1]), gid: Number(m[2] ?? m[1]) };
}

export function buildRuntimeSpec(p: SpecParams): Record<string, unknown> {
  const { spec, image } = p;
  const env = new Map<string, string>();
  for (const kv of [DEFAULT_PATH, ...(image.Env ?? [])]) {
    const eq = kv.indexOf("=");
    if (eq > 0) env.set(kv.slice(0, eq), kv.slice(eq + 1));
  }
  for (const [k, v] of Object.entries(spec.env)) {
    if (!ENV_KEY_RE.test(k)) throw new InvalidSpecError(`env: ${JSON.stringify(k)} is not a variable name`);
    if (v.includes("\0")) throw new InvalidSpecError(`env: ${k} holds a NUL byte`);
    env.set(k, v);
  }
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1) throw new InvalidSpecError(`vcpus: ${spec.vcpus} must be a positive integer`);
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 4)
    throw new InvalidSpecError(`memory_mib: ${spec.memoryMiB} must be at least 4`);
  const memory = spec.memoryMiB * 1024 * 1024;
  if (!Number.isInteger(p.pidsLimit) || p.pidsLimit < 1)
    throw new InvalidSpecError(`pids limit: ${p.pidsLimit} must be a positive integer`);
  const namespaces = [
    { type: "pid" },
    { type: "ipc" },
    { type: "uts" },
    { type: "mount" },
    ...(p.network === "host" ? [] : [{ type: "network" }]),
  ];
  return {
    ociVersion: OCI_VERSION,
    process: {
      terminal: false,
      user: user(image),
      args: processArgs(spec, image),
      env: [...env].map(([k, v]) => `${k}=${v}`),
      cwd: image.WorkingDir || "/",
      capabilities: { bounding: CAPABILITIES, effective: CAPABILITIES, permitted: CAPABILITIES },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: "rootfs" },
    hostname: spec.name,
    mounts: [
      { destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "noexec", "nodev"] },
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] },
      {
        destination: "/dev/pts",
        type: "devpts",
        source: "devpts",
        options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
      },
      { destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
      { destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"] },
      { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
      { destination: "/run", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] },
      ...(p.network === "host"
        ? [
            { destination: "/etc/resolv.conf", type: "bind", source: "/etc/resolv.conf", options: ["rbind", "ro"] },
            { destination: "/etc/hosts", type: "bind", source: "/etc/hosts", options: ["rbind", "ro"] },
          ]
        : []),
    ],
    linux: {
      cgroupsPath: p.cgroupsPath,
      resources: {
        devices: [{ allow: false, access: "rwm" }],
        memory: { limit: memory, swap: memory },
        cpu: { quota: spec.vcpus * CPU_PERIOD, period: CPU_PERIOD, shares: 1024 * spec.vcpus },
        pids: { limit: p.pidsLimit },
      },
      seccomp: defaultSeccompProfile(),
      namespaces,
      maskedPaths: [
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
        "/proc/scsi",
      ],
      readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
  };
}
