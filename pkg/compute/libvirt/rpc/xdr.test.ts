// XDR against byte sequences worked out from RFC 4506 and libvirt's rpcgen conventions, plus
// round-trip properties over arbitrary values.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { XDR_STRING_MAX, XdrError, XdrReader, XdrWriter } from "./xdr.js";

const hex = (b: Buffer) => b.toString("hex");
const bytes = (h: string) => Buffer.from(h.replace(/\s+/g, ""), "hex");

describe("XdrWriter", () => {
  it("writes integers big-endian in 4 and 8 bytes", () => {
    const b = new XdrWriter().u32(0x01020304).i32(-2).u64(0x0102030405060708n).i64(-1n).bool(true).bool(false).finish();
    assert.equal(hex(b), "01020304" + "fffffffe" + "0102030405060708" + "ffffffffffffffff" + "00000001" + "00000000");
  });

  it("pads strings and variable opaques to 4 bytes with zeros after a length word", () => {
    assert.equal(hex(new XdrWriter().string("").finish()), "00000000");
    assert.equal(hex(new XdrWriter().string("a").finish()), "00000001" + "61000000");
    assert.equal(hex(new XdrWriter().string("abcd").finish()), "00000004" + "61626364");
    assert.equal(hex(new XdrWriter().string("vm1").finish()), "00000003" + "766d3100");
    assert.equal(hex(new XdrWriter().opaque(Buffer.from([1, 2, 3, 4, 5])).finish()), "00000005" + "0102030405000000");
  });

  it("counts UTF-8 bytes, not characters, in a string's length", () => {
    assert.equal(hex(new XdrWriter().string("é").finish()), "00000002" + "c3a90000");
  });

  it("writes fixed opaques without a length word", () => {
    const uuid = Buffer.from("00112233445566778899aabbccddeeff", "hex");
    assert.equal(hex(new XdrWriter().fixedOpaque(uuid, 16).finish()), hex(uuid));
    assert.equal(hex(new XdrWriter().fixedOpaque(Buffer.from([9, 9]), 2).finish()), "09090000");
    assert.throws(() => new XdrWriter().fixedOpaque(uuid, 15), XdrError);
  });

  it("writes an optional as a bool, then the value only when present", () => {
    const str = (w: XdrWriter, s: string) => void w.string(s);
    assert.equal(hex(new XdrWriter().optional<string>(undefined, str).finish()), "00000000");
    assert.equal(
      hex(new XdrWriter().optional("qemu:///system", str).finish()),
      "00000001" + "0000000e" + "71656d753a2f2f2f73797374656d0000",
    );
  });

  it("writes variable arrays with a count and fixed arrays without one", () => {
    const i32 = (w: XdrWriter, v: number) => void w.i32(v);
    assert.equal(hex(new XdrWriter().array([1, 2], i32).finish()), "00000002" + "00000001" + "00000002");
    assert.equal(hex(new XdrWriter().fixedArray([1, 2], 2, i32).finish()), "00000001" + "00000002");
    assert.throws(() => new XdrWriter().array([1, 2, 3], i32, 2), XdrError);
    assert.throws(() => new XdrWriter().fixedArray([1], 2, i32), XdrError);
  });

  it("refuses values its type cannot carry", () => {
    assert.throws(() => new XdrWriter().u32(-1), XdrError);
    assert.throws(() => new XdrWriter().u32(2 ** 32), XdrError);
    assert.throws(() => new XdrWriter().u32(1.5), XdrError);
    assert.throws(() => new XdrWriter().i32(2 ** 31), XdrError);
    assert.throws(() => new XdrWriter().u64(-1n), XdrError);
    assert.throws(() => new XdrWriter().u64(1n << 64n), XdrError);
    assert.throws(() => new XdrWriter().i64(1n << 63n), XdrError);
    assert.throws(() => new XdrWriter().string("ab", 1), XdrError);
  });

  it("grows past its initial buffer and keeps padding zero after growing", () => {
    const w = new XdrWriter(16);
    for (let i = 0; i < 100; i++) w.string("x".repeat(i % 7));
    const r = new XdrReader(w.finish());
    for (let i = 0; i < 100; i++) assert.equal(r.string(), "x".repeat(i % 7));
    r.end();
    const big = new XdrWriter(16).opaque(Buffer.alloc(100_001, 0xab)).finish();
    assert.equal(big.length, 4 + 100_004);
    assert.deepEqual([...big.subarray(-3)], [0, 0, 0]);
  });
});

describe("XdrReader", () => {
  it("reads what the writer wrote, in order", () => {
    const r = new XdrReader(bytes("fffffffe 00000001 0000000000000100 00000003 766d3100 00000000 00000001 0000002a"));
    assert.equal(r.i32(), -2);
    assert.equal(r.bool(), true);
    assert.equal(r.u64(), 256n);
    assert.equal(r.string(), "vm1");
    assert.equal(
      r.optional((x) => x.i32()),
      undefined,
    );
    assert.equal(
      r.optional((x) => x.i32()),
      42,
    );
    assert.equal(r.remaining, 0);
    r.end();
  });

  it("skips padding after a fixed opaque", () => {
    const r = new XdrReader(bytes("0a0b0c00 00000007"));
    assert.deepEqual([...r.fixedOpaque(3)], [10, 11, 12]);
    assert.equal(r.u32(), 7);
  });

  it("throws XdrError on truncation of every kind", () => {
    assert.throws(() => new XdrReader(bytes("000000")).u32(), XdrError);
    assert.throws(() => new XdrReader(bytes("00000000 000000")).u64(), XdrError);
    // Length 5 but only 4 bytes (the padding is missing as well).
    assert.throws(() => new XdrReader(bytes("00000005 61626364")).string(), XdrError);
    // The string's bytes are there but its padding is not.
    assert.throws(() => new XdrReader(bytes("00000001 61")).string(), XdrError);
    assert.throws(() => new XdrReader(bytes("00112233")).fixedOpaque(16), XdrError);
    assert.throws(() => new XdrReader(bytes("00000001")).optional((x) => x.u32()), XdrError);
    assert.throws(() => new XdrReader(bytes("00000003 00000001")).array((x) => x.u32()), XdrError);
  });

  it("throws XdrError on lengths over the limits before reading them", () => {
    const over = new XdrWriter().u32(XDR_STRING_MAX + 1).finish();
    assert.throws(() => new XdrReader(over).string(), /exceeds the limit of 4194304/);
    assert.throws(() => new XdrReader(bytes("00000005 0102030405000000")).opaque(4), XdrError);
    assert.throws(() => new XdrReader(bytes("00000002 00000001 00000002")).array((x) => x.u32(), 1), XdrError);
    // A string at exactly the limit is fine.
    const atLimit = new XdrWriter().string("x".repeat(XDR_STRING_MAX)).finish();
    assert.equal(new XdrReader(atLimit).string().length, XDR_STRING_MAX);
  });

  it("refuses a bool that is neither 0 nor 1", () => {
    assert.throws(() => new XdrReader(bytes("00000002")).bool(), XdrError);
    assert.throws(() => new XdrReader(bytes("01000000")).optional((x) => x.u32()), XdrError);
  });

  it("end() refuses trailing bytes", () => {
    const r = new XdrReader(bytes("00000001 00000002"));
    r.u32();
    assert.throws(() => r.end(), XdrError);
  });

  it("reads chars widened to ints (char model[32] is 128 bytes)", () => {
    const w = new XdrWriter();
    const model = [..."x86_64"].map((c) => c.charCodeAt(0));
    w.fixedArray([...model, ...new Array<number>(26).fill(0)], 32, (x, v) => void x.i32(v));
    const b = w.finish();
    assert.equal(b.length, 128);
    const chars = new XdrReader(b).fixedArray(32, (x) => x.i32());
    assert.deepEqual(chars.slice(0, 6), model);
  });
});

describe("XDR round trips (property)", () => {
  it("integers, strings, opaques, optionals and arrays", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: -0x80000000, max: 0x7fffffff }),
        fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n }),
        fc.string({ unit: "grapheme", maxLength: 40 }),
        fc.uint8Array({ maxLength: 40 }),
        fc.option(fc.string(), { nil: undefined }),
        fc.array(fc.integer({ min: -5, max: 5 }), { maxLength: 10 }),
        fc.double({ noNaN: true }),
        (u, i, u64, i64, s, o, opt, arr, d) => {
          const w = new XdrWriter(16)
            .u32(u)
            .i32(i)
            .u64(u64)
            .i64(i64)
            .string(s)
            .opaque(o)
            .optional(opt, (x, v) => void x.string(v))
            .array(arr, (x, v) => void x.i32(v))
            .f64(d);
          const b = w.finish();
          assert.equal(b.length % 4, 0);
          const r = new XdrReader(b);
          assert.equal(r.u32(), u);
          assert.equal(r.i32(), i);
          assert.equal(r.u64(), u64);
          assert.equal(r.i64(), i64);
          assert.equal(r.string(), s);
          assert.deepEqual(new Uint8Array(r.opaque()), o);
          assert.equal(
            r.optional((x) => x.string()),
            opt,
          );
          assert.deepEqual(
            r.array((x) => x.i32()),
            arr,
          );
          assert.equal(r.f64(), d);
          r.end();
        },
      ),
    );
  });

  it("any prefix of an encoding fails with XdrError, never another error", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 20 }), fc.array(fc.bigInt({ min: 0n, max: 1000n }), { maxLength: 4 }), (s, arr) => {
        const b = new XdrWriter()
          .string(s)
          .array(arr, (x, v) => void x.u64(v))
          .finish();
        for (let cut = 0; cut < b.length; cut++) {
          const r = new XdrReader(b.subarray(0, cut));
          assert.throws(() => {
            r.string();
            r.array((x) => x.u64());
          }, XdrError);
        }
      }),
    );
  });
});
