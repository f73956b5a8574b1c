/*
 * The agent's settings (configs/agent.yaml documents each one) and the construction of its
 * drivers from names. YAML keys are the flag names: `node-name: n1` is `--node-name n1` is
 * HYPERVISOR_NODE_NAME=n1.
 */
import os from "node:os";
import { join } from "node:path";
import type { Driver } from "../../pkg/compute/driver/index.js";
import { createMockDriver } from "../../pkg/compute/mock/index.js";
import { ConfigError, type ConfigOf, type Schema } from "../../pkg/config/index.js";

export const agentSchema = {
  "node-name": {
    type: "string",
    default: defaultNodeName(),
    description: "name of this node in the cluster (DNS label); empty: the hostname",
  },
  "etcd-endpoints": { type: "string[]", default: ["http://127.0.0.1:2379"], description: "etcd client URLs, comma-separated" },
  "etcd-ca-file": { type: "string", default: "", description: "CA certificate (PEM) to verify etcd; empty: no TLS" },
  "etcd-cert-file": { type: "string", default: "", description: "client certificate (PEM) for etcd" },
  "etcd-key-file": { type: "string", default: "", description: "client key (PEM) for etcd" },
  "etcd-username": { type: "string", default: "", description: "etcd user; empty: no authentication" },
  "etcd-password": { type: "string", default: "", description: "etcd password", secret: true },
  "heartbeat-ttl": {
    type: "number",
    default: 10,
    integer: true,
    min: 1,
    description: "liveness lease TTL in seconds; the node is NotReady this long after the agent dies",
  },
  drivers: { type: "string[]", default: ["mock"], description: "drivers to run, comma-separated (mock)" },
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
  workers: { type: "number", default: 4, integer: true, min: 1, description: "instances reconciled in parallel" },
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

/** Drivers this build can run. libvirt and containerd join when their packages land. */
export const SUPPORTED_DRIVERS = ["mock"] as const;

/** Builds the named drivers, each with its state under dataDir/<driver>. */
export function buildDrivers(names: string[], dataDir: string, capacity: { vcpus?: number; memoryMiB?: number } = {}): Driver[] {
  if (names.length === 0) throw new ConfigError("drivers: at least one driver is required", "drivers");
  const seen = new Set<string>();
  return names.map((name) => {
    if (seen.has(name)) throw new ConfigError(`drivers: ${JSON.stringify(name)} is listed twice`, "drivers");
    seen.add(name);
    switch (name) {
      case "mock":
        return createMockDriver({ stateDir: join(dataDir, "mock"), capacity });
      default:
        throw new ConfigError(
          `drivers: unknown driver ${JSON.stringify(name)}; this agent supports ${SUPPORTED_DRIVERS.join(", ")}`,
          "drivers",
        );
    }
  });
}
