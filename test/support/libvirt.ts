/*
 * The real libvirtd for integration tests. scripts/start-libvirtd.sh starts virtlogd and libvirtd
 * when they are not running (no systemd here), waits until the socket answers, and prints its path.
 * And what a test checks of a running VM from the host: its QEMU process and the TCP ports it listens on.
 */
import { execFile } from "node:child_process";
import { readdir, readFile, readlink } from "node:fs/promises";
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

/** The pid of a running domain's QEMU process (libvirt's pid file). */
export async function qemuPid(domain: string): Promise<number> {
  const text = await readFile(`/var/run/libvirt/qemu/${domain}.pid`, "utf8");
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no pid in libvirt's pid file of ${domain}: ${JSON.stringify(text)}`);
  return pid;
}

/**
 * TCP ports a process listens on, IPv4 and IPv6, read from the kernel: the socket inodes among its
 * open descriptors, matched against the LISTEN rows (state 0A) of /proc/net/tcp and tcp6.
 */
export async function listeningTcpPorts(pid: number): Promise<number[]> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) inodes.add(m[1]!);
  }
  const ports: number[] = [];
  for (const table of [`/proc/${pid}/net/tcp`, `/proc/${pid}/net/tcp6`]) {
    const rows = (await readFile(table, "utf8").catch(() => "")).split("\n").slice(1);
    for (const row of rows) {
      const f = row.trim().split(/\s+/);
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      if (f.length < 10 || f[3] !== "0A" || !inodes.has(f[9]!)) continue;
      ports.push(parseInt(f[1]!.split(":").pop()!, 16));
    }
  }
  return ports.sort((a, b) => a - b);
}
