/*
 * The real libvirtd for integration tests. scripts/start-libvirtd.sh starts virtlogd and libvirtd
 * when they are not running (no systemd here), waits until the socket answers, and prints its path.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { repoRoot } from "./procs.js";

const run = promisify(execFile);

let started: Promise<string> | undefined;

/** Starts libvirtd if needed (once per process) and resolves with its socket path. */
export function ensureLibvirtd(): Promise<string> {
  started ??= (async () => {
    const { stdout } = await run("bash", ["scripts/start-libvirtd.sh"], { cwd: repoRoot, timeout: 120_000 });
    const path = stdout.trim().split("\n").pop();
    if (!path) throw new Error("scripts/start-libvirtd.sh printed no socket path");
    return path;
  })();
  // A failed start is not cached: the next test file may try again.
  started.catch(() => (started = undefined));
  return started;
}
