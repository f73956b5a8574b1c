/*
 * One libvirt RPC packet on the wire, and the splitter that recovers packets from a byte stream:
 *
 *   ┌──────────┬───────────────────────────── header (24) ─────────────────────────┬─────────┐
 *   │ len  u32 │ prog u32 │ vers u32 │ proc i32 │ type i32 │ serial u32 │ status i32 │ payload │
 *   └──────────┴──────────┴──────────┴──────────┴──────────┴────────────┴────────────┴─────────┘
 *     len counts everything, itself included: 28 ≤ len ≤ 4 + VIR_NET_MESSAGE_MAX
 *
 * The length word is the only framing, so a bad one cannot be skipped over: the splitter refuses
 * it and stays failed, and the client drops the connection.
 */

export const REMOTE_PROGRAM = 0x20008086;
export const REMOTE_PROTOCOL_VERSION = 1;
export const QEMU_PROGRAM = 0x20008087;
export const KEEPALIVE_PROGRAM = 0x6b656570; // "keep"
export const KEEPALIVE_PROTOCOL_VERSION = 1;
export const KEEPALIVE_PROC_PING = 1;
export const KEEPALIVE_PROC_PONG = 2;

/** virNetMessageType */
export const MessageType = {
  CALL: 0,
  REPLY: 1,
  /** An event or keepalive, either direction. */
  MESSAGE: 2,
  STREAM: 3,
  CALL_WITH_FDS: 4,
  REPLY_WITH_FDS: 5,
  STREAM_HOLE: 6,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

/** virNetMessageStatus */
export const MessageStatus = { OK: 0, ERROR: 1, CONTINUE: 2 } as const;
export type MessageStatus = (typeof MessageStatus)[keyof typeof MessageStatus];

/** Largest packet after the length word (current virnetprotocol.x). */
export const VIR_NET_MESSAGE_MAX = 33554432;
export const VIR_NET_MESSAGE_LEN_MAX = 4;
export const VIR_NET_MESSAGE_HEADER_MAX = 24;
/** The smallest legal packet: length word plus header, empty payload. */
export const PACKET_MIN = VIR_NET_MESSAGE_LEN_MAX + VIR_NET_MESSAGE_HEADER_MAX;
export const PACKET_MAX = VIR_NET_MESSAGE_LEN_MAX + VIR_NET_MESSAGE_MAX;

export interface PacketHeader {
  prog: number;
  vers: number;
  proc: number;
  type: number;
  serial: number;
  status: number;
}

export interface Packet {
  header: PacketHeader;
  payload: Buffer;
}

/** The byte stream cannot be framed (bad length word) or a packet is malformed. */
export class PacketError extends Error {
  override readonly name = "PacketError";
}

export function encodePacket(header: PacketHeader, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  const len = PACKET_MIN + payload.length;
  if (len > PACKET_MAX) throw new PacketError(`packet of ${len} bytes exceeds the limit of ${PACKET_MAX}`);
  const b = Buffer.alloc(len);
  b.writeUInt32BE(len, 0);
  b.writeUInt32BE(header.prog, 4);
  b.writeUInt32BE(header.vers, 8);
  b.writeInt32BE(header.proc, 12);
  b.writeInt32BE(header.type, 16);
  b.writeUInt32BE(header.serial, 20);
  b.writeInt32BE(header.status, 24);
  b.set(payload, PACKET_MIN);
  return b;
}

/** Decodes one whole packet, length word included. The payload is a view into `b`. */
export function decodePacket(b: Buffer): Packet {
  checkLength(b.length);
  const len = b.readUInt32BE(0);
  if (len !== b.length) throw new PacketError(`length word says ${len} bytes, packet has ${b.length}`);
  return {
    header: {
      prog: b.readUInt32BE(4),
      vers: b.readUInt32BE(8),
      proc: b.readInt32BE(12),
      type: b.readInt32BE(16),
      serial: b.readUInt32BE(20),
      status: b.readInt32BE(24),
    },
    payload: b.subarray(PACKET_MIN),
  };
}

function checkLength(len: number): void {
  if (len < PACKET_MIN) throw new PacketError(`packet length ${len} is below the minimum of ${PACKET_MIN}`);
  if (len > PACKET_MAX) throw new PacketError(`packet length ${len} exceeds the limit of ${PACKET_MAX}`);
}

/**
 * Turns chunks of a byte stream, cut anywhere, into whole packets. Once the length word is known
 * the packet's buffer is allocated at its final size and filled in place, so a large packet
 * arriving in many small chunks costs one copy, not a concatenation per chunk.
 */
export class PacketSplitter {
  private readonly lenWord = Buffer.alloc(VIR_NET_MESSAGE_LEN_MAX);
  private lenFill = 0;
  private packet: Buffer | undefined;
  private fill = 0;
  private failed: PacketError | undefined;

  /** Bytes held towards the next, incomplete packet. */
  get buffered(): number {
    return this.packet ? this.fill : this.lenFill;
  }

  /** The packets completed by this chunk, in order. Throws PacketError on a bad length word. */
  push(chunk: Uint8Array): Packet[] {
    if (this.failed) throw this.failed;
    const out: Packet[] = [];
    let off = 0;
    while (off < chunk.length) {
      if (!this.packet) {
        const n = Math.min(VIR_NET_MESSAGE_LEN_MAX - this.lenFill, chunk.length - off);
        this.lenWord.set(chunk.subarray(off, off + n), this.lenFill);
        this.lenFill += n;
        off += n;
        if (this.lenFill < VIR_NET_MESSAGE_LEN_MAX) break;
        const len = this.lenWord.readUInt32BE(0);
        try {
          checkLength(len);
        } catch (e) {
          this.failed = e as PacketError;
          throw e;
        }
        this.packet = Buffer.allocUnsafe(len);
        this.lenWord.copy(this.packet, 0);
        this.fill = VIR_NET_MESSAGE_LEN_MAX;
        this.lenFill = 0;
      }
      const n = Math.min(this.packet.length - this.fill, chunk.length - off);
      this.packet.set(chunk.subarray(off, off + n), this.fill);
      this.fill += n;
      off += n;
      if (this.fill === this.packet.length) {
        out.push(decodePacket(this.packet));
        this.packet = undefined;
        this.fill = 0;
      }
    }
    return out;
  }
}
