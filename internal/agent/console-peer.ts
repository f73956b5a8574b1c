/*
 * The console end of a tunnel on the node: a connection to a VM's VNC server (its unix socket, or a
 * loopback port for a VM an older agent defined), or the serial pty in raw mode. AgentService's
 * Console reads and writes it as a byte stream.
 */
import { closeSync, constants as fs, openSync } from "node:fs";
import { connect } from "node:net";
import { ReadStream as TtyReadStream, WriteStream as TtyWriteStream } from "node:tty";
import type { ConsoleEndpoint } from "../../pkg/compute/driver/index.js";

/** One end of a console: something to read from and write to, and to close. */
export interface ConsolePeer {
  /** The console's bytes; ends (or errors) when it closes. */
  readable: NodeJS.ReadableStream & AsyncIterable<Buffer>;
  /** Resolves once the bytes are written or buffered below the high-water mark (backpressure). */
  write(b: Uint8Array): Promise<void>;
  onClose(fn: () => void): void;
  /** Idempotent. */
  close(): void;
}

/** Opens the console a driver named. */
export async function openConsole(found: ConsoleEndpoint): Promise<ConsolePeer> {
  if (found.kind === "serial") return openPty(found.path);
  return dial("socket" in found ? { path: found.socket } : { host: found.host, port: found.port });
}

/** A VNC server: its unix socket, or (a VM still on TCP) its loopback port. */
function dial(to: { path: string } | { host: string; port: number }): Promise<ConsolePeer> {
  return new Promise((resolve, reject) => {
    const s = "path" in to ? connect({ path: to.path }) : connect({ port: to.port, host: to.host, noDelay: true });
    s.once("error", reject);
    s.once("connect", () => {
      s.removeListener("error", reject);
      s.on("error", () => undefined);
      s.setNoDelay(true);
      resolve({
        readable: s,
        write: (b) => writeDrained(s, b),
        onClose: (fn) => void s.once("close", fn),
        close: () => s.destroy(),
      });
    });
  });
}

/** The pty in raw mode (no echo, no line editing), read and written through libuv's tty handle. */
function openPty(path: string): ConsolePeer {
  // Two descriptors: libuv will not watch one fd with two handles.
  const rfd = openSync(path, fs.O_RDONLY | fs.O_NOCTTY);
  let wfd: number;
  try {
    wfd = openSync(path, fs.O_WRONLY | fs.O_NOCTTY);
  } catch (e) {
    closeSync(rfd);
    throw e;
  }
  const rd = new TtyReadStream(rfd);
  rd.setRawMode(true);
  const wr = new TtyWriteStream(wfd);
  rd.on("error", () => undefined);
  wr.on("error", () => undefined);
  let closed = false;
  const listeners: (() => void)[] = [];
  const close = () => {
    if (closed) return;
    closed = true;
    rd.destroy();
    wr.destroy();
    for (const fn of listeners) fn();
  };
  rd.once("close", close);
  return { readable: rd, write: (b) => writeDrained(wr, b), onClose: (fn) => void listeners.push(fn), close };
}

/** Writes, and when the stream's buffer is full waits for it to drain (or to close). */
function writeDrained(w: NodeJS.WritableStream & { destroyed: boolean }, b: Uint8Array): Promise<void> {
  if (w.destroyed || w.write(b)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      w.removeListener("drain", done);
      w.removeListener("close", done);
      resolve();
    };
    w.once("drain", done);
    w.once("close", done);
  });
}
