/*
 * The agent's settings (configs/agent.yaml documents each one) and the construction of its
 * drivers from names. YAML keys are the flag names: `node-name: n1` is `--node-name n1` is
 * HYPERVISOR_NODE_NAME=n1.
 */
import os from "node:os";
import { join } from "node:path";
import { DRIVER_NAMES, driverEntry, type Driver, type DriverName } from "../../pkg/compute/driver/index.js";
import { createContainerdDriver, DEFAULT_PIDS_LIMIT } from "../../pkg/compute/containerd/index.js";
import { createLibvirtDriver, parseNetwork } from "../../pkg/compute/libvirt/index.js";
import { createMockDriver } from "../../pkg/compute/mock/index.js";
import { ConfigError, type ConfigOf, type Schema } from "../../pkg/config/index.js";
import { etcdSchema } from "../../pkg/cluster/etcd/index.js";
import type { OperationDeadlines } from "./deadlines.js";

export const agentSchema = {
  "node-name": {
    type: "string",
    default: defaultNodeName(),
    description: "name of this node in the cluster (DNS label); empty: the hostname",
  },
  ...etcdSchema,
  server: {
    type: "string[]",
    default: [],
    description:
      "https:// URLs of the cluster's servers (comma-separated): the join (a node certificate for node:<node-name>, kept in pki-dir), renewals and instance lookups go to one that answers; empty: no join",
  },
  "join-token": {
    type: "string",
    default: "",
    description:
      "join token (hypervisor-ctl join-token create) for the first start; later starts use the certificate (better: join-token-file)",
  },
  "join-token-file": { type: "string", default: "", description: "file whose first line is the join token (wins over join-token)" },
  "pki-dir": {
    type: "string",
    default: "",
    description: "the node's key, certificate, the cluster CA and its node secret (0700, files 0600); empty: data-dir/pki",
  },
  "heartbeat-ttl": {
    type: "number",
    default: 10,
    integer: true,
    min: 1,
    description: "liveness lease TTL in seconds; the node is NotReady this long after the agent dies",
  },
  drivers: { type: "string[]", default: ["mock"], description: `drivers to run, comma-separated (${DRIVER_NAMES.join(", ")})` },
  "data-dir": { type: "string", default: "/var/lib/hypervisor/agent", description: "agent and driver state" },
  label: { type: "map", default: {}, description: "node label k=v (repeatable)" },
  address: { type: "string", default: "", description: "address the cluster reaches this node at; empty: first non-loopback IPv4" },
  "capacity-vcpus": { type: "number", default: 0, integer: true, min: 0, description: "vCPUs to offer; 0: all CPUs of the machine" },
  "capacity-memory-mib": { type: "number", default: 0, integer: true, min: 0, description: "memory to offer in MiB; 0: all memory" },
  "capacity-disk-gib": {
    type: "number",
    default: 0,
    integer: true,
    min: 0,
    description: "disk to offer in GiB; 0: size of data-dir's filesystem",
  },
  listen: {
    type: "string",
    default: "127.0.0.1:0",
    description:
      "HOST:PORT of the agent's endpoint, where the server calls AgentService: logs, images, orphan purges, consoles (port 0: any free port)",
  },
  "libvirt-socket": { type: "string", default: "/var/run/libvirt/libvirt-sock", description: "libvirtd's unix socket (libvirt driver)" },
  "libvirt-uri": { type: "string", default: "qemu:///system", description: "libvirt connection URI (libvirt driver)" },
  "libvirt-image-dir": {
    type: "string",
    default: "/var/lib/hypervisor/images",
    description: "base disk images, kernels and initrds that VM specs may name (libvirt driver)",
  },
  "libvirt-network": {
    type: "string",
    default: "none",
    description:
      "VM NICs when a spec names none: none, user (QEMU NAT; it reaches this node's loopback, so it needs allow-host-network) or bridge:<name>",
  },
  "libvirt-domain-type": {
    type: "string",
    default: "auto",
    description: "kvm, qemu (TCG) or auto: kvm when /dev/kvm works (libvirt driver)",
  },
  "containerd-socket": {
    type: "string",
    default: "/run/containerd/containerd.sock",
    description: "containerd's gRPC socket (containerd driver)",
  },
  "containerd-namespace": {
    type: "string",
    default: "hypervisor",
    description: "containerd namespace the agent's containers and images live in",
  },
  "containerd-snapshotter": {
    type: "string",
    default: "",
    description: "snapshotter for container filesystems; empty: the namespace's containerd.io/defaults/snapshotter label, else overlayfs",
  },
  "containerd-network": {
    type: "string",
    default: "none",
    description: "container networking: none (own namespace, loopback only) or host (needs allow-host-network)",
  },
  "containerd-pids-limit": {
    type: "number",
    default: 1024,
    integer: true,
    min: 1,
    description: "processes and threads per container (cgroup pids.max): the default, and the most driver_config pids-limit may ask",
  },
  "allow-host-network": {
    type: "boolean",
    default: false,
    description:
      "let containers share this node's network namespace (driver_config network=host); it reaches everything on the node's loopback",
  },
  "allowed-bridges": {
    type: "string[]",
    default: [],
    description: "host bridges VMs may join (driver_config network=bridge:<name>), comma-separated; empty: none",
  },
  taint: {
    type: "string[]",
    default: [],
    description: "node taints KEY=VALUE:EFFECT or KEY:EFFECT, EFFECT NoSchedule or PreferNoSchedule, comma-separated",
  },
  "reserved-vcpus": {
    type: "number",
    default: 0,
    integer: true,
    min: 0,
    description: "vCPUs held back for the host, never offered to instances",
  },
  "reserved-memory-mib": { type: "number", default: 0, integer: true, min: 0, description: "memory in MiB held back for the host" },
  "reserved-disk-gib": { type: "number", default: 0, integer: true, min: 0, description: "disk in GiB held back for the host" },
  workers: { type: "number", default: 4, integer: true, min: 1, description: "instances reconciled in parallel" },
  "default-stop-timeout-seconds": {
    type: "number",
    default: 30,
    integer: true,
    min: 1,
    description: "graceful stop timeout of an instance stopped without one",
  },
  "max-stop-timeout-seconds": {
    type: "number",
    default: 3600,
    integer: true,
    min: 1,
    description: "longest graceful stop timeout the agent honours, whatever the store asks",
  },
  "stop-deadline-margin-seconds": {
    type: "number",
    default: 60,
    integer: true,
    min: 1,
    description: "added to a stop's timeout to make its deadline: time for the forced stop",
  },
  "create-deadline-seconds": { type: "number", default: 300, integer: true, min: 1, description: "deadline of a driver create" },
  "start-deadline-seconds": { type: "number", default: 120, integer: true, min: 1, description: "deadline of a driver start" },
  "destroy-deadline-seconds": { type: "number", default: 120, integer: true, min: 1, description: "deadline of a driver destroy" },
  "query-deadline-seconds": {
    type: "number",
    default: 30,
    integer: true,
    min: 1,
    description: "deadline of a driver inspect, list, stats or fingerprint",
  },
  "balloon-deadline-seconds": {
    type: "number",
    default: 60,
    integer: true,
    min: 1,
    description: "deadline of a balloon (memory target) change",
  },
  "resync-seconds": {
    type: "number",
    default: 30,
    integer: true,
    min: 1,
    description: "period of the safety-net resync of every instance",
  },
} satisfies Schema;

/** The hostname as a DNS label: lowercased, up to the first dot. */
export function defaultNodeName(): string {
  return os.hostname().toLowerCase().split(".")[0] ?? "";
}

export type AgentConfig = ConfigOf<typeof agentSchema>;

/** Drivers this build can run: every driver of the registry. */
export const SUPPORTED_DRIVERS: readonly DriverName[] = DRIVER_NAMES;

/** What the runtime drivers need to know (agent settings, or the --dev server's). */
export interface DriverSettings {
  /** The node the agent runs as: the owner recorded in its domains. */
  nodeName?: string;
  libvirtSocket: string;
  libvirtUri: string;
  libvirtImageDir: string;
  libvirtNetwork: string;
  libvirtDomainType: string;
  containerdSocket?: string;
  containerdNamespace?: string;
  containerdSnapshotter?: string;
  containerdNetwork?: string;
  containerdPidsLimit?: number;
  /** What instances may use of the host (default: nothing). */
  allowHostNetwork?: boolean;
  allowedBridges?: string[];
}

export const DRIVER_DEFAULTS: DriverSettings = {
  libvirtSocket: agentSchema["libvirt-socket"].default,
  libvirtUri: agentSchema["libvirt-uri"].default,
  libvirtImageDir: agentSchema["libvirt-image-dir"].default,
  libvirtNetwork: agentSchema["libvirt-network"].default,
  libvirtDomainType: agentSchema["libvirt-domain-type"].default,
  containerdSocket: agentSchema["containerd-socket"].default,
  containerdNamespace: agentSchema["containerd-namespace"].default,
  containerdSnapshotter: agentSchema["containerd-snapshotter"].default,
  containerdNetwork: agentSchema["containerd-network"].default,
  containerdPidsLimit: agentSchema["containerd-pids-limit"].default,
  allowHostNetwork: agentSchema["allow-host-network"].default,
  allowedBridges: agentSchema["allowed-bridges"].default,
};

/** Builds the named drivers, each with its state under dataDir/<driver>. */
export function buildDrivers(
  names: string[],
  dataDir: string,
  capacity: { vcpus?: number; memoryMiB?: number } = {},
  settings: DriverSettings = DRIVER_DEFAULTS,
): Driver[] {
  if (names.length === 0) throw new ConfigError("drivers: at least one driver is required", "drivers");
  const allowedBridges = settings.allowedBridges ?? [];
  for (const b of allowedBridges)
    if (!BRIDGE_RE.test(b)) throw new ConfigError(`allowed-bridges: ${JSON.stringify(b)} is not an interface name`, "allowed-bridges");
  const seen = new Set<string>();
  return names.map((name) => {
    if (seen.has(name)) throw new ConfigError(`drivers: ${JSON.stringify(name)} is listed twice`, "drivers");
    seen.add(name);
    if (!driverEntry(name))
      throw new ConfigError(
        `drivers: unknown driver ${JSON.stringify(name)}; this agent supports ${SUPPORTED_DRIVERS.join(", ")}`,
        "drivers",
      );
    const known = name as DriverName;
    switch (known) {
      case "mock":
        return createMockDriver({ stateDir: join(dataDir, "mock"), capacity });
      case "libvirt": {
        const type = settings.libvirtDomainType;
        if (type !== "auto" && type !== "kvm" && type !== "qemu")
          throw new ConfigError(`libvirt-domain-type: ${JSON.stringify(type)} must be auto, kvm or qemu`, "libvirt-domain-type");
        let network;
        try {
          network = parseNetwork("libvirt-network", settings.libvirtNetwork);
        } catch (e) {
          throw new ConfigError((e as Error).message, "libvirt-network");
        }
        if (network.mode === "user" && !settings.allowHostNetwork)
          throw new ConfigError(
            "libvirt-network: user-mode networking lets every VM reach this node's loopback (10.0.2.2 is 127.0.0.1); it needs allow-host-network: true",
            "libvirt-network",
          );
        if (network.mode === "bridge" && !allowedBridges.includes(network.bridge))
          throw new ConfigError(
            `libvirt-network: ${JSON.stringify(settings.libvirtNetwork)} names a bridge that allowed-bridges does not list (allowed-bridges: [${allowedBridges.join(", ")}])`,
            "libvirt-network",
          );
        return createLibvirtDriver({
          stateDir: join(dataDir, "libvirt"),
          imageDir: settings.libvirtImageDir,
          socketPath: settings.libvirtSocket,
          uri: settings.libvirtUri,
          network,
          allowedBridges,
          allowHostNetwork: settings.allowHostNetwork ?? false,
          domainType: type,
          ...(settings.nodeName ? { owner: settings.nodeName } : {}),
        });
      }
      case "containerd": {
        const network = settings.containerdNetwork ?? "none";
        if (network !== "none" && network !== "host")
          throw new ConfigError(`containerd-network: ${JSON.stringify(network)} must be none or host`, "containerd-network");
        if (network === "host" && !settings.allowHostNetwork)
          throw new ConfigError(
            'containerd-network: "host" needs the host network allowed (allow-host-network: true)',
            "containerd-network",
          );
        const namespace = settings.containerdNamespace ?? "hypervisor";
        if (!/^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$/.test(namespace))
          throw new ConfigError(
            `containerd-namespace: ${JSON.stringify(namespace)} is not a containerd namespace name`,
            "containerd-namespace",
          );
        return createContainerdDriver({
          stateDir: join(dataDir, "containerd"),
          socketPath: settings.containerdSocket ?? "/run/containerd/containerd.sock",
          namespace,
          network,
          allowHostNetwork: settings.allowHostNetwork === true,
          pidsLimit: settings.containerdPidsLimit ?? DEFAULT_PIDS_LIMIT,
          ...(settings.containerdSnapshotter ? { snapshotter: settings.containerdSnapshotter } : {}),
          ...(settings.nodeName ? { owner: settings.nodeName } : {}),
        });
      }
      default: {
        // A driver added to the registry must be built here: the type checker says so.
        const missing: never = known;
        throw new ConfigError(`drivers: ${JSON.stringify(missing)} has no builder in this agent`, "drivers");
      }
    }
  });
}

/** A Linux interface name (IFNAMSIZ 16 with its NUL). */
const BRIDGE_RE = /^[A-Za-z0-9_.-]{1,15}$/;

/** The deadlines of driver operations, from the agent's settings. */
export function deadlinesOf(c: AgentConfig): OperationDeadlines {
  return {
    createMs: c.createDeadlineSeconds * 1000,
    startMs: c.startDeadlineSeconds * 1000,
    stopMarginMs: c.stopDeadlineMarginSeconds * 1000,
    destroyMs: c.destroyDeadlineSeconds * 1000,
    queryMs: c.queryDeadlineSeconds * 1000,
    balloonMs: c.balloonDeadlineSeconds * 1000,
  };
}

export interface TaintSetting {
  key: string;
  value: string;
  effect: "NoSchedule" | "PreferNoSchedule";
}

const TAINT_RE =
  /^([A-Za-z0-9][A-Za-z0-9_./-]{0,252})(?:=([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?)?:(NoSchedule|PreferNoSchedule)$/;

/** "dedicated=db:NoSchedule" or "maintenance:PreferNoSchedule" → taint; ConfigError naming the setting. */
export function parseTaints(list: string[]): TaintSetting[] {
  return list.map((t) => {
    const m = TAINT_RE.exec(t);
    if (!m)
      throw new ConfigError(
        `taint: ${JSON.stringify(t)} is not KEY=VALUE:EFFECT or KEY:EFFECT (EFFECT NoSchedule or PreferNoSchedule)`,
        "taint",
      );
    return { key: m[1]!, value: m[2] ?? "", effect: m[4] as TaintSetting["effect"] };
  });
}
