/*
 * Real processes for end-to-end tests: the built binaries under dist/, spawned with their output
 * captured, stopped (SIGTERM) or killed (SIGKILL) by the pid we started, never by name.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";

export const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));

export function binPath(name: "hypervisor-server" | "hypervisor-agent" | "hypervisor-ctl"): string {
  return `${repoRoot}dist/cmd/${name}/main.js`;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export class Proc {
  readonly output: string[] = [];
  private exited: Promise<number | null>;
  private child: ChildProcess;

  constructor(
    readonly name: string,
    readonly args: string[],
    env: Record<string, string> = {},
    /** The program; node by default, `args` then starting with the script. */
    command: string = process.execPath,
  ) {
    this.child = spawn(command, args, {
      env: { ...process.env, HYPERVISOR_LOG_LEVEL: "info", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const collect = (b: Buffer) => {
      this.output.push(...b.toString().split("\n").filter(Boolean));
      if (this.output.length > 5000) this.output.splice(0, this.output.length - 5000);
    };
    this.child.stdout!.on("data", collect);
    this.child.stderr!.on("data", collect);
    this.exited = new Promise((resolve) => this.child.once("exit", (code) => resolve(code)));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Resolves when a line matching re has been printed. */
  async waitFor(re: RegExp, timeoutMs = 60_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = this.output.find((l) => re.test(l));
      if (line) return line;
      if (!this.running) throw new Error(`${this.name} exited (${this.child.exitCode}) before printing ${re}:\n${this.tail()}`);
      if (Date.now() > deadline) throw new Error(`${this.name} did not print ${re}:\n${this.tail()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  tail(n = 30): string {
    return this.output.slice(-n).join("\n");
  }

  /** SIGTERM, then SIGKILL after graceMs; resolves with the exit code. */
  async stop(graceMs = 10_000): Promise<number | null> {
    if (!this.running) return this.exited;
    this.child.kill("SIGTERM");
    const t = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }

  async kill9(): Promise<void> {
    if (!this.running) return;
    this.child.kill("SIGKILL");
    await this.exited;
  }
}

/** Polls fn until it returns a truthy value; fails with `what` after the timeout. */
export async function until<T>(
  what: string,
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 60_000,
  everyMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out waiting for ${what}${lastError ? ` (last error: ${lastError instanceof Error ? lastError.message : JSON.stringify(lastError)})` : ""}`,
      );
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
