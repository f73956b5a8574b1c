// Framing against the worked examples of PROTOCOLS.md §1.7, and the splitter under every chunking.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  KEEPALIVE_PROGRAM,
  MessageStatus,
  MessageType,
  PACKET_MAX,
  PacketError,
  PacketSplitter,
  REMOTE_PROGRAM,
  VIR_NET_MESSAGE_MAX,
  decodePacket,
  encodePacket,
  type PacketHeader,
} from "./packet.js";
import { Procedure } from "./procedures.js";
import { XdrReader, XdrWriter } from "./xdr.js";

const bytes = (h: string) => Buffer.from(h.replace(/\s+/g, ""), "hex");

const call = (proc: number, serial: number): PacketHeader => ({
  prog: REMOTE_PROGRAM,
  vers: 1,
  proc,
  type: MessageType.CALL,
  serial,
  status: MessageStatus.OK,
});

// PROTOCOLS.md §1.7: CONNECT_OPEN("qemu:///system", 0), serial 1, 56 bytes.
const CONNECT_OPEN = bytes(`
  00 00 00 38  20 00 80 86  00 00 00 01  00 00 00 01  00 00 00 00  00 00 00 01  00 00 00 00
  00 00 00 01  00 00 00 0e  71 65 6d 75 3a 2f 2f 2f 73 79 73 74 65 6d 00 00  00 00 00 00`);
// PROTOCOLS.md §1.7: DOMAIN_LOOKUP_BY_NAME("vm1"), serial 2.
const LOOKUP_VM1 = bytes("00 00 00 24 20 00 80 86 00 00 00 01 00 00 00 17 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 03 76 6d 31 00");

describe("packet encoding", () => {
  it("CONNECT_OPEN qemu:///system with serial 1 is the 56 bytes of the worked example", () => {
    const args = new XdrWriter()
      .optional("qemu:///system", (w, s) => void w.string(s))
      .u32(0)
      .finish();
    const p = encodePacket(call(Procedure.CONNECT_OPEN, 1), args);
    assert.equal(p.length, 56);
    assert.deepEqual(p, CONNECT_OPEN);
  });

  it("DOMAIN_LOOKUP_BY_NAME vm1 with serial 2 is the bytes of the worked example", () => {
    const p = encodePacket(call(Procedure.DOMAIN_LOOKUP_BY_NAME, 2), new XdrWriter().string("vm1").finish());
    assert.deepEqual(p, LOOKUP_VM1);
  });

  it("decodes the worked examples back to header and payload", () => {
    const open = decodePacket(CONNECT_OPEN);
    assert.deepEqual(open.header, call(1, 1));
    const r = new XdrReader(open.payload);
    assert.equal(
      r.optional((x) => x.string()),
      "qemu:///system",
    );
    assert.equal(r.u32(), 0);
    r.end();
    const lookup = decodePacket(LOOKUP_VM1);
    assert.deepEqual(lookup.header, call(23, 2));
    assert.equal(new XdrReader(lookup.payload).string(), "vm1");
  });

  it("a keepalive PONG is 28 bytes with an empty payload", () => {
    const p = encodePacket({ prog: KEEPALIVE_PROGRAM, vers: 1, proc: 2, type: MessageType.MESSAGE, serial: 0, status: 0 });
    assert.deepEqual(p, bytes("0000001c 6b656570 00000001 00000002 00000002 00000000 00000000"));
    assert.equal(decodePacket(p).payload.length, 0);
  });

  it("keeps a negative procedure or status signed and a high serial unsigned", () => {
    const h = { prog: 0xffffffff, vers: 1, proc: -1, type: 1, serial: 0xfffffffe, status: -2 };
    assert.deepEqual(decodePacket(encodePacket(h)).header, h);
  });

  it("refuses packets that are too short, too long, or disagree with their length word", () => {
    assert.throws(() => decodePacket(Buffer.alloc(27)), PacketError);
    const p = Buffer.from(LOOKUP_VM1);
    p.writeUInt32BE(0x28, 0);
    assert.throws(() => decodePacket(p), /length word says 40 bytes, packet has 36/);
    assert.throws(() => encodePacket(call(1, 1), Buffer.alloc(VIR_NET_MESSAGE_MAX)), PacketError);
  });

  it("header round trip (property)", () => {
    fc.assert(
      fc.property(
        fc.record({
          prog: fc.integer({ min: 0, max: 0xffffffff }),
          vers: fc.integer({ min: 0, max: 0xffffffff }),
          proc: fc.integer({ min: -0x80000000, max: 0x7fffffff }),
          type: fc.integer({ min: 0, max: 6 }),
          serial: fc.integer({ min: 0, max: 0xffffffff }),
          status: fc.integer({ min: 0, max: 2 }),
        }),
        fc.uint8Array({ maxLength: 64 }),
        (h, payload) => {
          const p = decodePacket(encodePacket(h, payload));
          assert.deepEqual(p.header, { ...h });
          assert.deepEqual(new Uint8Array(p.payload), payload);
        },
      ),
    );
  });
});

describe("PacketSplitter", () => {
  const stream = Buffer.concat([CONNECT_OPEN, LOOKUP_VM1, encodePacket(call(Procedure.CONNECT_CLOSE, 3))]);

  it("recovers packets fed one byte at a time", () => {
    const s = new PacketSplitter();
    const got = [];
    for (const byte of stream) {
      got.push(...s.push(Buffer.from([byte])));
    }
    assert.deepEqual(
      got.map((p) => [p.header.proc, p.header.serial]),
      [
        [1, 1],
        [23, 2],
        [2, 3],
      ],
    );
    assert.deepEqual(got[0]!.payload, CONNECT_OPEN.subarray(28));
    assert.equal(s.buffered, 0);
  });

  it("recovers several packets from one chunk and keeps the partial rest", () => {
    const s = new PacketSplitter();
    const got = s.push(stream.subarray(0, CONNECT_OPEN.length + LOOKUP_VM1.length + 5));
    assert.equal(got.length, 2);
    assert.equal(s.buffered, 5);
    const rest = s.push(stream.subarray(CONNECT_OPEN.length + LOOKUP_VM1.length + 5));
    assert.equal(rest.length, 1);
    assert.equal(rest[0]!.header.proc, 2);
  });

  it("gives the same packets for any chunking (property)", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 40 }), (sizes) => {
        const s = new PacketSplitter();
        const got = [];
        let off = 0;
        for (let i = 0; off < stream.length; i++) {
          const n = sizes[i % sizes.length]!;
          got.push(...s.push(stream.subarray(off, off + n)));
          off += n;
        }
        assert.deepEqual(
          got.map((p) => [p.header.serial, p.payload.length]),
          [
            [1, 28],
            [2, 8],
            [3, 0],
          ],
        );
      }),
    );
  });

  it("refuses a length word under 28 and stays failed", () => {
    const s = new PacketSplitter();
    assert.throws(() => s.push(bytes("0000001b")), /below the minimum of 28/);
    assert.throws(() => s.push(CONNECT_OPEN), PacketError);
  });

  it("refuses a length word over the maximum before buffering anything", () => {
    const s = new PacketSplitter();
    const len = Buffer.alloc(4);
    len.writeUInt32BE(PACKET_MAX + 1);
    assert.throws(() => s.push(len), /exceeds the limit/);
    // The largest legal length is accepted (and then waits for its bytes).
    const ok = new PacketSplitter();
    len.writeUInt32BE(PACKET_MAX);
    assert.deepEqual(ok.push(len), []);
    assert.equal(ok.buffered, 4);
  });

  it("accepts a bare 28-byte packet split inside its length word", () => {
    const s = new PacketSplitter();
    const p = encodePacket(call(Procedure.CONNECT_CLOSE, 9));
    assert.deepEqual(s.push(p.subarray(0, 2)), []);
    const got = s.push(p.subarray(2));
    assert.equal(got.length, 1);
    assert.equal(got[0]!.header.serial, 9);
    assert.equal(got[0]!.payload.length, 0);
  });
});
