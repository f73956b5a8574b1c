/*
 * The real containerd for integration tests, and the busybox image they run. scripts/start-containerd.sh
 * starts the project's own containerd (its config, root and socket, apart from a Debian-default one)
 * when it is not running and prints the socket path; scripts/build-busybox-image.sh builds a small
 * reproducible OCI image tarball (named BUSYBOX_REF) from Debian's busybox-static. The namespace
 * `hypervisor` carries the snapshotter and runtime to use as labels (containerd.io/defaults/*); tests
 * of their own use a namespace of their own and clean it.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { repoRoot } from "./procs.js";

const run = promisify(execFile);

/** The name the image tarball carries (io.containerd.image.name), so an import creates this image. */
export const BUSYBOX_REF = "hypervisor.dev/busybox:test";

export interface BusyboxImage {
  /** Absolute path of the OCI image layout tarball. */
  file: string;
  ref: string;
}

/** Runs a script that prints its result as the last stdout line. */
async function lastLine(script: string, timeout: number): Promise<string> {
  const { stdout } = await run("bash", [script], { cwd: repoRoot, timeout });
  const line = stdout.trim().split("\n").pop();
  if (!line) throw new Error(`${script} printed nothing on stdout`);
  return line;
}

let started: Promise<string> | undefined;

/** Starts containerd if needed (once per process) and resolves with its gRPC socket path. */
export function ensureContainerd(): Promise<string> {
  started ??= lastLine("scripts/start-containerd.sh", 120_000);
  // A failed start is not cached: the next test file may try again.
  started.catch(() => (started = undefined));
  return started;
}

let built: Promise<BusyboxImage> | undefined;

/** Builds the busybox image tarball if needed (once per process; a no-op when it is current). */
export function busyboxImage(): Promise<BusyboxImage> {
  built ??= lastLine("scripts/build-busybox-image.sh", 120_000).then((file) => ({ file, ref: BUSYBOX_REF }));
  // A failed build is not cached: the next test file may try again.
  built.catch(() => (built = undefined));
  return built;
}
