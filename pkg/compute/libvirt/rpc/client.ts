/*
 * The libvirt RPC transport: one unix socket, many calls in flight, replies matched by serial.
 *
 *   call(proc, args) ──► serial = n+1 ──► pending[n+1] ──► CALL  prog/1/proc/0/serial/OK ──────► daemon
 *                                                                                                 │
 *   resolve(payload)  ◄── status OK     ◄┐                                                        │
 *   reject(LibvirtError) ◄ status ERROR ◄┤◄── pending[serial] ◄── REPLY (type 1), any order ◄─────┤
 *   (dropped: call was aborted)         ◄┘                                                        │
 *   onMessage(proc) subscribers ◄─────────── MESSAGE (type 2, prog REMOTE): events ◄──────────────┤
 *   PONG (KEEPALIVE, proc 2, type 2) ─────── MESSAGE (type 2, prog KEEPALIVE, proc 1 PING) ◄──────┘
 *
 *   socket end / error / bad framing / close() ──► every pending call rejects with
 *                                                  ConnectionClosedError; `closed` resolves
 *
 * Events are routed by type and procedure, never by serial: the daemon stamps them with a serial
 * of its own. libvirt has no way to cancel a call, so an aborted call still runs in the daemon;
 * the caller stops waiting and the late reply is dropped when it comes.
 */
import { createConnection, type Socket } from "node:net";
import { logger, type Logger } from "../../../log/index.js";
import { ConnectionClosedError, LibvirtError, decodeRemoteError } from "./errors.js";
import {
  KEEPALIVE_PROC_PING,
  KEEPALIVE_PROC_PONG,
  KEEPALIVE_PROGRAM,
  KEEPALIVE_PROTOCOL_VERSION,
  MessageStatus,
  MessageType,
  PacketError,
  PacketSplitter,
  REMOTE_PROGRAM,
  REMOTE_PROTOCOL_VERSION,
  encodePacket,
  type Packet,
  type PacketHeader,
} from "./packet.js";

export interface ConnectOptions {
  signal?: AbortSignal;
  log?: Logger;
}

export interface CallOptions {
  /** Stops waiting for the reply; the call itself still runs in the daemon. */
  signal?: AbortSignal;
  /** Defaults to REMOTE_PROGRAM; QEMU_PROGRAM for the QEMU-specific procedures. */
  program?: number;
}

export type MessageListener = (payload: Buffer, header: PacketHeader) => void;

interface Pending {
  proc: number;
  prog: number;
  resolve(payload: Buffer): void;
  reject(e: Error): void;
}

export class RpcClient {
  /** Resolves, never rejects, with the reason once the connection is over. */
  readonly closed: Promise<Error>;
  private resolveClosed!: (e: Error) => void;
  private closeReason: ConnectionClosedError | undefined;
  private socketError: Error | undefined;
  private serial = 0;
  private readonly pending = new Map<number, Pending>();
  private readonly listeners = new Map<number, Set<MessageListener>>();
  private readonly closeListeners = new Set<(e: Error) => void>();
  private readonly splitter = new PacketSplitter();
  private readonly socketClosed: Promise<void>;
  private pings = 0;

  private constructor(
    private readonly socket: Socket,
    private readonly log: Logger,
  ) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.socketClosed = new Promise((resolve) => socket.once("close", () => resolve()));
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    // 'close' always follows 'error'; keep the error as the cause of the ConnectionClosedError.
    socket.on("error", (e) => (this.socketError ??= e));
    socket.on("close", () => {
      const cause = this.socketError;
      this.fail(
        cause
          ? new ConnectionClosedError(`libvirt connection failed: ${cause.message}`, { cause })
          : new ConnectionClosedError("libvirt connection closed by the daemon"),
      );
    });
  }

  /** Connects to a libvirt daemon socket, e.g. /var/run/libvirt/libvirt-sock. Rejects with the socket's error (ENOENT, ECONNREFUSED, EACCES). */
  static connect(socketPath: string, opts: ConnectOptions = {}): Promise<RpcClient> {
    const { signal } = opts;
    const log = (opts.log ?? logger("libvirt-rpc")).child({ socket: socketPath });
    if (signal?.aborted) return Promise.reject(signal.reason as Error);
    return new Promise((resolve, reject) => {
      const socket = createConnection({ path: socketPath });
      const onAbort = () => {
        socket.destroy();
        reject(signal!.reason as Error);
      };
      const onError = (e: Error) => {
        signal?.removeEventListener("abort", onAbort);
        reject(e);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      socket.once("error", onError);
      socket.once("connect", () => {
        signal?.removeEventListener("abort", onAbort);
        socket.removeListener("error", onError);
        log.debug("connected");
        resolve(new RpcClient(socket, log));
      });
    });
  }

  /** True once the connection is over; every call from then on rejects with ConnectionClosedError. */
  get isClosed(): boolean {
    return this.closeReason !== undefined;
  }

  /** Calls made and not yet answered, failed or aborted. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Keepalive PINGs from the daemon answered so far. */
  get pingsAnswered(): number {
    return this.pings;
  }

  /**
   * Sends one CALL and resolves with the reply's payload (the procedure's *_ret, empty for void).
   * An error reply rejects with LibvirtError; a lost connection with ConnectionClosedError; an
   * abort with the signal's reason.
   */
  call(proc: number, args: Buffer | undefined, opts: CallOptions = {}): Promise<Buffer> {
    const { signal } = opts;
    const prog = opts.program ?? REMOTE_PROGRAM;
    if (this.closeReason) return Promise.reject(this.closeReason);
    if (signal?.aborted) return Promise.reject(signal.reason as Error);
    let packet: Buffer;
    const serial = this.nextSerial();
    try {
      packet = encodePacket({ prog, vers: REMOTE_PROTOCOL_VERSION, proc, type: MessageType.CALL, serial, status: MessageStatus.OK }, args);
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
    return new Promise<Buffer>((resolve, reject) => {
      const onAbort = () => {
        if (this.pending.delete(serial)) reject(signal!.reason as Error);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      const done = () => signal?.removeEventListener("abort", onAbort);
      this.pending.set(serial, {
        proc,
        prog,
        resolve: (b) => (done(), resolve(b)),
        reject: (e) => (done(), reject(e)),
      });
      // A failed write shows up as the socket's 'error' and then 'close', which rejects this call.
      this.socket.write(packet);
    });
  }

  /**
   * Subscribes to MESSAGE packets of the REMOTE program with this procedure number (events such as
   * 318 DOMAIN_EVENT_CALLBACK_LIFECYCLE). Listeners run synchronously in arrival order, so a
   * listener added before a call is sent sees every message that follows the call.
   */
  onMessage(proc: number, fn: MessageListener): () => void {
    let set = this.listeners.get(proc);
    if (!set) this.listeners.set(proc, (set = new Set()));
    set.add(fn);
    return () => {
      set.delete(fn);
      if (set.size === 0 && this.listeners.get(proc) === set) this.listeners.delete(proc);
    };
  }

  /** Runs fn once with the reason when the connection ends (at once if it already has). */
  onClose(fn: (e: Error) => void): () => void {
    if (this.closeReason) {
      const reason = this.closeReason;
      queueMicrotask(() => fn(reason));
      return () => undefined;
    }
    this.closeListeners.add(fn);
    return () => void this.closeListeners.delete(fn);
  }

  /** Drops the connection. Calls still waiting reject with ConnectionClosedError. Idempotent. */
  async close(): Promise<void> {
    this.fail(new ConnectionClosedError("libvirt connection closed by the client"));
    await this.socketClosed;
  }

  private nextSerial(): number {
    // Serials are u32; wrap to 1, skipping 0, which the protocol uses for unsolicited packets.
    this.serial = this.serial >= 0xffffffff ? 1 : this.serial + 1;
    return this.serial;
  }

  private onData(chunk: Buffer): void {
    let packets: Packet[];
    try {
      packets = this.splitter.push(chunk);
    } catch (e) {
      const cause = e as Error;
      this.fail(new ConnectionClosedError(`libvirt protocol error: ${cause.message}`, { cause }));
      return;
    }
    for (const p of packets) {
      this.dispatch(p);
      // A listener may have closed the client; the rest of the chunk belongs to no one.
      if (this.closeReason) return;
    }
  }

  private dispatch({ header, payload }: Packet): void {
    const { prog, proc, type, serial, status } = header;
    if (prog === KEEPALIVE_PROGRAM) {
      if (type === MessageType.MESSAGE && proc === KEEPALIVE_PROC_PING) {
        this.pings++;
        this.socket.write(
          encodePacket({
            prog: KEEPALIVE_PROGRAM,
            vers: KEEPALIVE_PROTOCOL_VERSION,
            proc: KEEPALIVE_PROC_PONG,
            type: MessageType.MESSAGE,
            serial: 0,
            status: MessageStatus.OK,
          }),
        );
      }
      return;
    }
    switch (type) {
      case MessageType.REPLY:
        return this.reply(header, payload);
      case MessageType.MESSAGE: {
        if (prog !== REMOTE_PROGRAM) break;
        const set = this.listeners.get(proc);
        if (!set) break;
        for (const fn of [...set]) {
          try {
            fn(payload, header);
          } catch (e) {
            // One broken subscriber must not take the connection (and everyone's calls) down.
            this.log.error({ err: e, proc }, "event listener threw");
          }
        }
        return;
      }
    }
    this.log.debug({ prog, proc, type, serial, status }, "dropped a packet nobody waits for");
  }

  private reply(header: PacketHeader, payload: Buffer): void {
    const { prog, proc, serial, status } = header;
    const call = this.pending.get(serial);
    if (!call) {
      this.log.debug({ proc, serial }, "dropped a reply to an aborted call");
      return;
    }
    this.pending.delete(serial);
    if (call.proc !== proc || call.prog !== prog) {
      call.reject(new PacketError(`reply to serial ${serial} is for procedure ${prog}:${proc}, the call was ${call.prog}:${call.proc}`));
      return;
    }
    if (status === MessageStatus.OK) return call.resolve(payload);
    if (status === MessageStatus.ERROR) {
      try {
        call.reject(new LibvirtError(decodeRemoteError(payload), proc));
      } catch (e) {
        // A remote_error we cannot decode: the framing held, so the connection carries on.
        call.reject(e instanceof Error ? e : new Error(String(e)));
      }
      return;
    }
    call.reject(new PacketError(`reply to serial ${serial} has status ${status}`));
  }

  private fail(reason: ConnectionClosedError): void {
    if (this.closeReason) return;
    this.closeReason = reason;
    this.log.debug({ reason: reason.message, pending: this.pending.size }, "connection closed");
    this.socket.destroy();
    const calls = [...this.pending.values()];
    this.pending.clear();
    for (const c of calls) c.reject(reason);
    this.listeners.clear();
    for (const fn of this.closeListeners) fn(reason);
    this.closeListeners.clear();
    this.resolveClosed(reason);
  }
}
