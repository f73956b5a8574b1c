/*
 * `instance console NAME`: the serial console in this terminal, like `virsh console`.
 *
 *   ConsoleService ticket ──► ws(s)://server/console/<ticket> ──► server ──► agent ──► the pty
 *   stdin (raw when a terminal) ──► ws      ws ──► stdout       Ctrl-] ends the session
 *
 * With --vnc it prints where a browser shows the graphical console (the /desktop/ page, which
 * takes its own ticket), and a one-time WebSocket URL for other noVNC-style clients: the VM's VNC
 * server is a unix socket on its node, with no TCP address to print.
 */
import { Command } from "commander";
import WebSocket from "ws";
import { ConsoleKind } from "../../api/gen/hypervisor/v1/console_pb.js";
import type { Context } from "./context.js";
import { CliError, ExitCode } from "./errors.js";

/** Ctrl-] (GS), the escape virsh and telnet use. */
const ESCAPE = 0x1d;

export function consoleCommand(ctx: Context): Command {
  return new Command("console")
    .description("attach to an instance's serial console (Ctrl-] detaches); --vnc: where its screen is")
    .argument("<name>", "instance name")
    .option("--vnc", "print the browser and WebSocket addresses of the graphical console instead")
    .action(async (name: string, opts: { vnc?: boolean }) => {
      const kind = opts.vnc ? ConsoleKind.VNC : ConsoleKind.SERIAL;
      const t = await ctx.clients().consoles.createConsoleTicket({ project: ctx.project(), name, kind }, { signal: ctx.signal });
      const base = ctx.clients().server.replace(/\/+$/, "");
      const wsUrl = base.replace(/^http/, "ws") + t.path;
      if (opts.vnc) {
        ctx.out(
          [
            `open in a browser: ${base}/desktop/?instance=${encodeURIComponent(name)}`,
            `websocket (one use, ${ttl(t.expireTime?.seconds)}): ${wsUrl}`,
            // There is no host:port to point a VNC viewer at: the VM's VNC server is a unix socket on its node.
            "the VM's VNC server listens on no TCP port: its screen is reached only through these (noVNC-style clients)",
            "",
          ].join("\n"),
        );
        return;
      }
      await attach(ctx, name, wsUrl);
    });
}

function ttl(seconds: bigint | undefined): string {
  if (seconds === undefined) return "short-lived";
  return `valid ${Math.max(0, Math.round(Number(seconds) - Date.now() / 1000))}s`;
}

async function attach(ctx: Context, name: string, url: string): Promise<void> {
  const stdin = ctx.io.stdin;
  if (!stdin) throw new CliError("console needs a standard input", ExitCode.Usage);
  // The same CA, client certificate and token as the API calls.
  const ws = new WebSocket(url, ctx.clients().webSocketOptions);
  ws.binaryType = "nodebuffer";
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("unexpected-response", (_req, res) =>
      reject(new CliError(`console of ${name} refused: HTTP ${res.statusCode ?? "?"}`, ExitCode.Api)),
    );
    ws.once("error", (e) => reject(new CliError(`console of ${name}: ${e.message}`, ExitCode.Unavailable)));
  });
  const raw = stdin.isTTY === true && typeof stdin.setRawMode === "function";
  ctx.io.stderr.write(`Connected to the serial console of ${name}. Ctrl-] detaches.\n`);
  if (raw) stdin.setRawMode!(true);
  await new Promise<void>((resolve) => {
    const done = () => {
      stdin.removeListener("data", onData);
      stdin.removeListener("end", onEnd);
      ctx.signal.removeEventListener("abort", onAbort);
      if (raw) stdin.setRawMode!(false);
      stdin.pause();
      resolve();
    };
    const onData = (chunk: Buffer | string) => {
      const b = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      const esc = b.indexOf(ESCAPE);
      if (esc >= 0) {
        if (esc > 0) ws.send(b.subarray(0, esc));
        ws.close();
        return;
      }
      // Backpressure: stop reading the keyboard while the socket's buffer is full.
      ws.send(b, () => undefined);
      if (ws.bufferedAmount > 1 << 20) {
        stdin.pause();
        const resume = () => (ws.bufferedAmount > 0 ? setTimeout(resume, 10) : stdin.resume());
        setTimeout(resume, 10);
      }
    };
    // End of input (a pipe): leave the session open until the other side closes or Ctrl-C.
    const onEnd = () => undefined;
    const onAbort = () => ws.close();
    const decoder = new TextDecoder();
    ws.on("message", (d: Buffer) => ctx.io.stdout.write(decoder.decode(d, { stream: true })));
    ws.once("close", done);
    stdin.on("data", onData);
    stdin.once("end", onEnd);
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    stdin.resume();
  });
  ctx.io.stderr.write("\nDetached.\n");
}
