/*
 * Which instances keep data on their node's own disk: a move (HA, drain) would start them on a
 * fresh disk elsewhere and leave the data behind, so the server moves them only when their disks
 * can follow (shared storage: none yet) or their spec declares the disks ephemeral. Known to the
 * server from the spec alone, before any agent answers; the driver registry takes this over when
 * drivers declare their capabilities in one place.
 */

/** Drivers whose instances booted from an image get a node-local disk (a qcow2 overlay, a rootfs). */
const LOCAL_DISK_DRIVERS = new Set(["libvirt", "firecracker"]);

export interface DiskFacts {
  driver: string;
  image: string;
  ephemeralDisks: boolean;
}

/**
 * Whether the spec gives the instance a disk only its node holds. Containers (their writable
 * layer is scratch, as in Kubernetes), mock instances and VMs booted from a kernel with no image
 * have none.
 */
export function keepsLocalDisk(spec: Pick<DiskFacts, "driver" | "image">): boolean {
  return LOCAL_DISK_DRIVERS.has(spec.driver) && spec.image !== "";
}

/** Why the instance cannot move to another node, or undefined when it can. */
export function pinnedBy(spec: DiskFacts | undefined, node: string): string | undefined {
  if (!spec || spec.ephemeralDisks || !keepsLocalDisk(spec)) return undefined;
  return `its disk is local to node ${node} and no shared storage can carry it (set spec.ephemeral_disks to let it move on a fresh disk)`;
}
