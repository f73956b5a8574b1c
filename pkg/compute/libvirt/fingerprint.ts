/*
 * What a libvirt node offers, as the node's driver attributes: libvirt and QEMU versions, kvm or
 * tcg, host CPUs and memory, read over the driver's own connection.
 */
import type { Fingerprint } from "../driver/index.js";
import type { LibvirtConnection } from "./rpc/index.js";

export async function fingerprintLibvirt(c: LibvirtConnection, type: "kvm" | "qemu"): Promise<Fingerprint> {
  const [lib, hv, info, host] = await Promise.all([c.getLibVersion(), c.getVersion(), c.nodeGetInfo(), c.getHostname()]);
  return {
    healthy: true,
    version: versionString(lib),
    message: "",
    attributes: {
      libvirt_version: versionString(lib),
      qemu_version: versionString(hv),
      domain_type: type,
      accel: type === "kvm" ? "kvm" : "tcg",
      host_cpus: String(info.cpus),
      host_memory_mib: String(Number(info.memoryKiB / 1024n)),
      hostname: host,
    },
  };
}

/** libvirt's version encoding, major·1,000,000 + minor·1,000 + micro, as "major.minor.micro". */
export function versionString(v: number | bigint): string {
  const n = Number(v);
  return `${Math.floor(n / 1_000_000)}.${Math.floor(n / 1000) % 1000}.${n % 1000}`;
}
