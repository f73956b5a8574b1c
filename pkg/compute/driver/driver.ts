/*
 * The Driver contract every runtime implements (libvirt, containerd, firecracker, mock).
 * Shaped after Nomad's plugins/drivers: the agent never knows which runtime it drives.
 *
 *        create ──► Created ──start──► Running ──stop(timeout)──► Stopped ──destroy──► (gone)
 *                                         │                          ▲
 *                                         └── exits on its own ──► Exited (exitCode)
 *
 * Every call is idempotent by instance name: create on an existing instance returns it, stop on a
 * stopped one resolves, destroy on a missing one resolves. Instances carry the hypervisor uid, the
 * owner node and the cluster id (setCluster) so `list` after an agent restart finds and re-adopts
 * them (RecoverTask in Nomad), and never another cluster's. destroy deletes the instance's disks:
 * the agent calls it only for an instance being deleted, one with ephemeral disks moved away, or
 * an orphan an operator purges (docs/architecture.md, "Data safety").
 * Optional features are declared in `capabilities` and implemented through the small interfaces
 * below; a driver never has a method that throws "not implemented".
 */
import type { HostAccessPolicy } from "./host-access.js";

export type DriverState = "created" | "running" | "stopped" | "exited" | "failed";

export interface DriverInstanceSpec {
  /** Instance name: unique in the cluster, DNS-label syntax (already validated). */
  name: string;
  uid: string;
  labels: Record<string, string>;
  image: string;
  vcpus: number;
  memoryMiB: number;
  diskGiB: number;
  command: string[];
  args: string[];
  env: Record<string, string>;
  kernel: string;
  initrd: string;
  cmdline: string;
  /** Driver-specific keys (e.g. mock: run_for, exit_code, start_error, start_delay). */
  config: Record<string, string>;
}

export interface DriverInstance {
  name: string;
  uid: string;
  state: DriverState;
  exitCode?: number;
  /** Milliseconds since the epoch. */
  startedAt?: number;
  finishedAt?: number;
  message?: string;
  addresses: string[];
  /** Runtime details worth showing in status (e.g. domain uuid, vnc_socket). */
  details: Record<string, string>;
  /**
   * The cluster id in the instance's ownership mark; absent for an instance marked before marks
   * had one (the agent adopts those only when their uid is assigned to it).
   */
  cluster?: string;
  /** Destroying it deletes a disk only this node holds (a VM's overlay): data a move would lose. */
  localDisk?: boolean;
}

export interface Capabilities {
  console: boolean;
  balloon: boolean;
  stats: boolean;
  snapshot: boolean;
  migrate: boolean;
  /** Keeps a console log per instance (LogsDriver). */
  logs: boolean;
  /** Keeps an image store that takes OCI tarball imports (ImageDriver). */
  images: boolean;
}

export interface Fingerprint {
  /** The runtime answered and can run instances. */
  healthy: boolean;
  version: string;
  message: string;
  attributes: Record<string, string>;
}

export interface DriverEvent {
  name: string;
  uid: string;
  state: DriverState;
  exitCode?: number;
  message?: string;
  /** Milliseconds since the epoch. */
  time: number;
}

export interface InstanceStats {
  cpuTimeNs: number;
  memoryUsedBytes: number;
  memoryLimitBytes: number;
}

export interface Signalled {
  signal?: AbortSignal;
}

export interface Driver {
  readonly name: string;
  readonly capabilities: Capabilities;
  /**
   * What this node lets the driver's instances use of the host (./host-access.ts), as its agent
   * config says; absent: nothing. The driver refuses more at create, and the node advertises it.
   */
  readonly hostAccess?: HostAccessPolicy;
  /**
   * The cluster this driver works for, as the agent read it from the store before any other call.
   * create marks instances with it (with the owner node and the uid); every other call treats an
   * instance marked by another cluster as absent (inspect, list) or refuses it (create of the same
   * name, destroy): never touched. Instances marked without a cluster id stay visible, with
   * `cluster` absent. Until it is called the driver marks none and sees every cluster's.
   */
  setCluster(id: string): void;
  fingerprint(opts?: Signalled): Promise<Fingerprint>;
  /** Prepares the instance (disk, container, domain definition) without starting it. */
  create(spec: DriverInstanceSpec, opts?: Signalled): Promise<DriverInstance>;
  start(name: string, opts?: Signalled): Promise<DriverInstance>;
  /** Graceful stop, forced after timeoutMs. */
  stop(name: string, timeoutMs: number, opts?: Signalled): Promise<DriverInstance>;
  /** Removes the instance and everything it owns. Resolves if it does not exist. */
  destroy(name: string, opts?: Signalled & { force?: boolean }): Promise<void>;
  /** undefined when the runtime has no such instance. */
  inspect(name: string, opts?: Signalled): Promise<DriverInstance | undefined>;
  /** Every instance this driver owns on the node (for adoption after an agent restart). */
  list(opts?: Signalled): Promise<DriverInstance[]>;
  /** State changes as they happen, until the signal aborts. */
  events(opts: Required<Signalled>): AsyncIterable<DriverEvent>;
  /** Releases connections; instances keep running. */
  close(): Promise<void>;
}

export interface StatsDriver extends Driver {
  stats(name: string, opts?: Signalled): Promise<InstanceStats>;
}

export type ConsoleKind = "vnc" | "serial";

/**
 * Where a console's bytes are on the node: a VNC server's unix socket, or a pty device (serial).
 * A VNC server on TCP is only the VM an older agent defined and that has not started since (see
 * the libvirt driver): new ones never listen on TCP.
 */
export type ConsoleEndpoint =
  { kind: "vnc"; socket: string } | { kind: "vnc"; host: string; port: number } | { kind: "serial"; path: string };

export interface ConsoleDriver extends Driver {
  /** Throws DriverError when the instance is not running or has no console of that kind. */
  console(name: string, kind: ConsoleKind, opts?: Signalled): Promise<ConsoleEndpoint>;
}

export interface BalloonDriver extends Driver {
  setMemory(name: string, memoryMiB: number, opts?: Signalled): Promise<void>;
}

export interface LogsDriver extends Driver {
  /** Path of the instance's console log on this node (it may not exist yet). */
  logFile(name: string): string;
}

/** An image in a driver's store on this node. */
export interface DriverImage {
  /** Reference, e.g. docker.io/library/alpine:3.20. */
  name: string;
  /** Digest of the manifest or index the name points to. */
  digest: string;
  sizeBytes: number;
  /** Milliseconds since the epoch. */
  createdAt?: number;
}

export interface ImageDriver extends Driver {
  /**
   * Imports an OCI image layout tarball (docker save / ctr export) from a local file: content,
   * image records, and whatever the driver must unpack to run it. Resolves with the images the
   * tarball named. Throws InvalidSpecError for a tarball that is not one, leaving nothing behind.
   */
  importImage(file: string, opts?: Signalled): Promise<DriverImage[]>;
  listImages(opts?: Signalled): Promise<DriverImage[]>;
}

export const hasStats = (d: Driver): d is StatsDriver => d.capabilities.stats;
export const hasConsole = (d: Driver): d is ConsoleDriver => d.capabilities.console;
export const hasBalloon = (d: Driver): d is BalloonDriver => d.capabilities.balloon;
export const hasLogs = (d: Driver): d is LogsDriver => d.capabilities.logs;
export const hasImages = (d: Driver): d is ImageDriver => d.capabilities.images;
