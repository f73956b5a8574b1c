/*
 * What this node is and has, as the Node record the scheduler reads: CPUs, memory and disk
 * (detected, or simulated through the capacity options for scale tests), host identity, and each
 * driver's own fingerprint (health, version, capabilities, what of the host it lets instances use).
 */
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { statfs } from "node:fs/promises";
import os from "node:os";
import { type DriverInfo, DriverInfoSchema, type Node, NodeSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import type { Driver } from "../../pkg/compute/driver/index.js";

export const AGENT_VERSION = "0.1.0";

export interface Capacity {
  vcpus?: number;
  memoryMiB?: number;
  diskGiB?: number;
}

export interface NodeFingerprintOptions {
  nodeName: string;
  labels: Record<string, string>;
  drivers: Driver[];
  dataDir: string;
  /** Overrides of detected capacity (0 or absent: detect). */
  capacity?: Capacity;
  /** Address the server and consoles reach this node at (absent: first non-internal IPv4). */
  address?: string;
  signal?: AbortSignal;
}

export async function fingerprintNode(opts: NodeFingerprintOptions): Promise<Node> {
  const vcpus = opts.capacity?.vcpus || os.cpus().length;
  const memoryMiB = opts.capacity?.memoryMiB || Math.floor(os.totalmem() / (1024 * 1024));
  const diskGiB = opts.capacity?.diskGiB || (await diskOf(opts.dataDir));
  const drivers = await Promise.all(opts.drivers.map((d) => driverInfo(d, opts.signal)));
  const resources = { vcpus, memoryMib: BigInt(memoryMiB), diskGib: BigInt(diskGiB) };
  return create(NodeSchema, {
    name: opts.nodeName,
    labels: { ...opts.labels },
    capacity: resources,
    allocatable: resources,
    drivers,
    agentVersion: AGENT_VERSION,
    address: opts.address || firstAddress(),
    hostname: os.hostname(),
    os: os.platform(),
    arch: os.arch(),
    registerTime: timestampNow(),
  });
}

async function driverInfo(d: Driver, signal?: AbortSignal): Promise<DriverInfo> {
  try {
    const fp = await d.fingerprint(signal ? { signal } : {});
    return create(DriverInfoSchema, {
      name: d.name,
      healthy: fp.healthy,
      version: fp.version,
      message: fp.message,
      attributes: fp.attributes,
      capabilities: d.capabilities,
      ...hostAccess(d),
    });
  } catch (e) {
    // A driver that cannot even fingerprint is reported unhealthy, not fatal: the node still
    // serves its other drivers, and the scheduler skips this one.
    return create(DriverInfoSchema, {
      name: d.name,
      healthy: false,
      message: `fingerprint failed: ${(e as Error).message}`,
      capabilities: d.capabilities,
      ...hostAccess(d),
    });
  }
}

/** The driver's host access policy, when it allows anything (unset means nothing). */
function hostAccess(d: Driver): { hostAccess?: { hostNetwork: boolean; bridges: string[] } } {
  const p = d.hostAccess;
  return p && (p.hostNetwork || p.bridges.length) ? { hostAccess: { hostNetwork: p.hostNetwork, bridges: [...p.bridges] } } : {};
}

async function diskOf(dir: string): Promise<number> {
  try {
    const s = await statfs(dir);
    return Math.floor((s.blocks * s.bsize) / 1024 ** 3);
  } catch {
    return 0;
  }
}

function firstAddress(): string {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) if (a.family === "IPv4" && !a.internal) return a.address;
  }
  return "127.0.0.1";
}
