// remote_error decoded field by field from hand-written bytes (PROTOCOLS.md §1.6), with every
// optional pointer both absent and present, and the helpers callers branch on.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  ConnectionClosedError,
  ErrorCode,
  ErrorDomain,
  LibvirtError,
  decodeRemoteError,
  encodeRemoteError,
  isConnectionClosed,
  isDomainExists,
  isNoDomain,
  isOperationInvalid,
  isUnknownProcedure,
  type RemoteError,
} from "./errors.js";
import { XdrError } from "./xdr.js";

const bytes = (h: string) => Buffer.from(h.replace(/\s+/g, ""), "hex");
const UUID = "00112233445566778899aabbccddeeff";

// "Domain not found: no domain with matching name 'vm1'" is 52 bytes: no padding needed.
const MESSAGE = "Domain not found: no domain with matching name 'vm1'";
const NO_DOMAIN_MINIMAL = bytes(`
  0000002a 0000000a
  00000001 00000034 ${Buffer.from(MESSAGE).toString("hex")}
  00000002
  00000000 00000000 00000000 00000000
  00000000 00000000
  00000000`);

// Every pointer present: dom {name "vm1", uuid, id 7}, str1 "a", str2 "bc", str3 "", net {"default", uuid}.
const FULL = bytes(`
  00000037 00000014
  00000001 00000002 6f6b0000
  00000001
  00000001 00000003 766d3100 ${UUID} 00000007
  00000001 00000001 61000000
  00000001 00000002 62630000
  00000001 00000000
  ffffffff 0000000b
  00000001 00000007 64656661756c7400 ${UUID}`);

describe("remote_error", () => {
  it("decodes a NO_DOMAIN error with only the message present", () => {
    assert.equal(MESSAGE.length, 52);
    assert.deepEqual(decodeRemoteError(NO_DOMAIN_MINIMAL), {
      code: 42,
      domain: ErrorDomain.QEMU,
      message: MESSAGE,
      level: 2,
      dom: undefined,
      str1: undefined,
      str2: undefined,
      str3: undefined,
      int1: 0,
      int2: 0,
      net: undefined,
    });
  });

  it("decodes every optional pointer when present", () => {
    const e = decodeRemoteError(FULL);
    assert.deepEqual(e, {
      code: ErrorCode.OPERATION_INVALID,
      domain: ErrorDomain.DOMAIN,
      message: "ok",
      level: 1,
      dom: { name: "vm1", uuid: Buffer.from(UUID, "hex"), id: 7 },
      str1: "a",
      str2: "bc",
      str3: "",
      int1: -1,
      int2: 11,
      net: { name: "default", uuid: Buffer.from(UUID, "hex") },
    });
  });

  it("a message pointer that is absent leaves the message undefined", () => {
    const b = bytes("00000001 00000000 00000000 00000002 00000000 00000000 00000000 00000000 00000000 00000000 00000000");
    const e = decodeRemoteError(b);
    assert.equal(e.message, undefined);
    assert.equal(new LibvirtError(e).libvirtMessage, "(no message)");
  });

  it("encodes to the same bytes it decodes", () => {
    assert.deepEqual(encodeRemoteError(decodeRemoteError(FULL)), FULL);
    assert.deepEqual(encodeRemoteError(decodeRemoteError(NO_DOMAIN_MINIMAL)), NO_DOMAIN_MINIMAL);
  });

  it("round-trips any remote_error (property)", () => {
    const optStr = fc.option(fc.string(), { nil: undefined });
    const uuid = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((u) => Buffer.from(u));
    const arb: fc.Arbitrary<RemoteError> = fc.record(
      {
        code: fc.integer({ min: 0, max: 120 }),
        domain: fc.integer({ min: 0, max: 80 }),
        message: optStr,
        level: fc.integer({ min: 0, max: 2 }),
        dom: fc.option(fc.record({ name: fc.string(), uuid, id: fc.integer({ min: -1, max: 1000 }) }, { noNullPrototype: true }), {
          nil: undefined,
        }),
        str1: optStr,
        str2: optStr,
        str3: optStr,
        int1: fc.integer({ min: -0x80000000, max: 0x7fffffff }),
        int2: fc.integer({ min: -0x80000000, max: 0x7fffffff }),
        net: fc.option(fc.record({ name: fc.string(), uuid }, { noNullPrototype: true }), { nil: undefined }),
      },
      { noNullPrototype: true },
    );
    fc.assert(fc.property(arb, (e) => assert.deepEqual(decodeRemoteError(encodeRemoteError(e)), e)));
  });

  it("throws XdrError on a truncated error or trailing bytes", () => {
    for (let cut = 0; cut < FULL.length; cut += 4) assert.throws(() => decodeRemoteError(FULL.subarray(0, cut)), XdrError);
    assert.throws(() => decodeRemoteError(Buffer.concat([NO_DOMAIN_MINIMAL, Buffer.alloc(4)])), XdrError);
  });
});

describe("LibvirtError", () => {
  const e = new LibvirtError(decodeRemoteError(NO_DOMAIN_MINIMAL), 23);

  it("keeps libvirt's code, domain, level and message", () => {
    assert.ok(e instanceof Error);
    assert.equal(e.name, "LibvirtError");
    assert.equal(e.code, 42);
    assert.equal(e.domain, 10);
    assert.equal(e.level, 2);
    assert.equal(e.libvirtMessage, MESSAGE);
    assert.equal(e.proc, 23);
    assert.match(e.message, /no domain with matching name 'vm1'.*NO_DOMAIN.*procedure 23/);
  });

  it("the helpers match on the code only", () => {
    assert.equal(isNoDomain(e), true);
    assert.equal(isOperationInvalid(e), false);
    assert.equal(isDomainExists(e), false);
    const invalid = new LibvirtError({ ...decodeRemoteError(NO_DOMAIN_MINIMAL), code: 55 });
    assert.equal(isOperationInvalid(invalid), true);
    assert.equal(isNoDomain(invalid), false);
    assert.equal(isNoDomain(new Error("Domain not found")), false);
    assert.equal(isNoDomain(undefined), false);
  });

  it("recognises an unknown procedure by libvirt's text", () => {
    const unknown = new LibvirtError({ ...decodeRemoteError(NO_DOMAIN_MINIMAL), code: 39, message: "unknown procedure: 9999" });
    assert.equal(isUnknownProcedure(unknown), true);
    assert.equal(isUnknownProcedure(e), false);
  });
});

describe("ConnectionClosedError", () => {
  it("is an Error that carries its cause", () => {
    const cause = new Error("ECONNRESET");
    const e = new ConnectionClosedError("libvirt connection failed: ECONNRESET", { cause });
    assert.equal(e.name, "ConnectionClosedError");
    assert.equal(e.cause, cause);
    assert.equal(isConnectionClosed(e), true);
    assert.equal(isConnectionClosed(cause), false);
    assert.equal(new ConnectionClosedError().message, "libvirt connection closed");
  });
});
