// RpcClient against a scripted daemon on a real unix socket, for what libvirtd cannot be made to
// do on demand: reply out of order, ping, send garbage, or vanish mid-call.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { RpcClient } from "./client.js";
import { ConnectionClosedError, LibvirtError, encodeRemoteError, isNoDomain } from "./errors.js";
import {
  KEEPALIVE_PROC_PING,
  KEEPALIVE_PROC_PONG,
  KEEPALIVE_PROGRAM,
  MessageStatus,
  MessageType,
  PacketError,
  PacketSplitter,
  REMOTE_PROGRAM,
  encodePacket,
  type Packet,
} from "./packet.js";
import { XdrReader, XdrWriter } from "./xdr.js";

type Handler = (p: Packet, sock: Socket) => void;

interface FakeDaemon {
  path: string;
  /** Every packet any client sent, in order. */
  received: Packet[];
  sockets: Socket[];
  close(): Promise<void>;
}

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "hv-rpc-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
async function fakeDaemon(handle: Handler): Promise<FakeDaemon> {
  const path = join(dir, `d${n++}.sock`);
  const received: Packet[] = [];
  const sockets: Socket[] = [];
  const server: Server = createServer((sock) => {
    sockets.push(sock);
    const splitter = new PacketSplitter();
    sock.on("error", () => undefined);
    sock.on("data", (chunk: Buffer) => {
      for (const p of splitter.push(chunk)) {
        received.push(p);
        handle(p, sock);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    path,
    received,
    sockets,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function reply(call: Packet, payload?: Buffer, status: number = MessageStatus.OK): Buffer {
  return encodePacket({ ...call.header, type: MessageType.REPLY, status }, payload);
}

const u32 = (v: number) => new XdrWriter().u32(v).finish();
const readU32 = (b: Buffer) => new XdrReader(b).u32();
const calls = (d: FakeDaemon) => d.received.filter((p) => p.header.type === MessageType.CALL);

/** Echoes each call's first u32 argument back, at once. */
const echo: Handler = (p, sock) => void sock.write(reply(p, p.payload));

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setImmediate(r));
  assert.ok(cond(), `never: ${what}`);
}

describe("RpcClient", () => {
  it("sends CALL packets with increasing serials and resolves with the reply's payload", async () => {
    const d = await fakeDaemon(echo);
    const c = await RpcClient.connect(d.path);
    try {
      assert.equal(readU32(await c.call(4, u32(7))), 7);
      assert.equal(readU32(await c.call(5, u32(8))), 8);
      assert.deepEqual(
        calls(d).map((p) => p.header),
        [
          { prog: REMOTE_PROGRAM, vers: 1, proc: 4, type: 0, serial: 1, status: 0 },
          { prog: REMOTE_PROGRAM, vers: 1, proc: 5, type: 0, serial: 2, status: 0 },
        ],
      );
      // A void call sends no payload.
      await c.call(2, undefined);
      assert.equal(calls(d)[2]!.payload.length, 0);
    } finally {
      await c.close();
      await d.close();
    }
  });

  it("matches out-of-order replies to their calls by serial", async () => {
    const pending: Packet[] = [];
    const d = await fakeDaemon((p, sock) => {
      pending.push(p);
      // Answer all five at once, last first, as one write split at odd offsets.
      if (pending.length === 5) {
        const all = Buffer.concat(pending.reverse().map((q) => reply(q, u32(readU32(q.payload) * 10))));
        for (let off = 0; off < all.length; off += 7) sock.write(all.subarray(off, off + 7));
      }
    });
    const c = await RpcClient.connect(d.path);
    try {
      const results = await Promise.all([1, 2, 3, 4, 5].map((v) => c.call(23, u32(v)).then(readU32)));
      assert.deepEqual(results, [10, 20, 30, 40, 50]);
      assert.equal(c.inFlight, 0);
    } finally {
      await c.close();
      await d.close();
    }
  });

  it("keeps hundreds of calls in flight at once", async () => {
    const pending: Packet[] = [];
    const d = await fakeDaemon((p, sock) => {
      pending.push(p);
      if (pending.length === 300) {
        // A fixed shuffle: every third, then the rest backwards.
        const order = [...pending.filter((_, i) => i % 3 === 0), ...pending.filter((_, i) => i % 3 !== 0).reverse()];
        sock.write(Buffer.concat(order.map((q) => reply(q, q.payload))));
      }
    });
    const c = await RpcClient.connect(d.path);
    try {
      const values = Array.from({ length: 300 }, (_, i) => i * 3 + 1);
      assert.deepEqual(await Promise.all(values.map((v) => c.call(212, u32(v)).then(readU32))), values);
    } finally {
      await c.close();
      await d.close();
    }
  });

  it("rejects an error reply with LibvirtError and stays usable", async () => {
    const d = await fakeDaemon((p, sock) => {
      if (p.header.proc === 23) {
        const err = encodeRemoteError({
          code: 42,
          domain: 10,
          message: "Domain not found: no domain with matching name 'nope'",
          level: 2,
          int1: -1,
          int2: -1,
        });
        sock.write(reply(p, err, MessageStatus.ERROR));
      } else echo(p, sock);
    });
    const c = await RpcClient.connect(d.path);
    try {
      const e = await c.call(23, new XdrWriter().string("nope").finish()).then(
        () => assert.fail("resolved"),
        (e: unknown) => e,
      );
      assert.ok(e instanceof LibvirtError);
      assert.equal(isNoDomain(e), true);
      assert.equal(e.domain, 10);
      assert.equal(e.level, 2);
      assert.equal(e.proc, 23);
      assert.equal(e.libvirtMessage, "Domain not found: no domain with matching name 'nope'");
      assert.equal(readU32(await c.call(4, u32(1))), 1);
      assert.equal(c.isClosed, false);
    } finally {
      await c.close();
      await d.close();
    }
  });

  it("answers a keepalive PING with a PONG and carries on", async () => {
    let pendingCall: Packet | undefined;
    const d = await fakeDaemon((p, sock) => {
      if (p.header.type === MessageType.CALL) {
        // PING first; the reply only goes out once the PONG is in (see below).
        sock.write(
          encodePacket({ prog: KEEPALIVE_PROGRAM, vers: 1, proc: KEEPALIVE_PROC_PING, type: MessageType.MESSAGE, serial: 0, status: 0 }),
        );
        pendingCall = p;
      } else if (p.header.prog === KEEPALIVE_PROGRAM && pendingCall) {
        sock.write(reply(pendingCall, u32(99)));
      }
    });
    const c = await RpcClient.connect(d.path);
    try {
      assert.equal(readU32(await c.call(4, undefined)), 99);
      const pong = d.received.find((p) => p.header.prog === KEEPALIVE_PROGRAM)!;
      assert.deepEqual(pong.header, {
        prog: KEEPALIVE_PROGRAM,
        vers: 1,
        proc: KEEPALIVE_PROC_PONG,
        type: MessageType.MESSAGE,
        serial: 0,
        status: MessageStatus.OK,
      });
      assert.equal(pong.payload.length, 0);
      assert.equal(c.pingsAnswered, 1);
    } finally {
      await c.close();
      await d.close();
    }
  });

  it("delivers event messages to subscribers by procedure, never to a call with the same serial", async () => {
    let first: Packet | undefined;
    const d = await fakeDaemon((p, sock) => {
      if (!first) {
        first = p;
        // Two events stamped with the call's serial: they must not be taken for its reply.
        const ev = (proc: number, v: number) =>
          encodePacket({ prog: REMOTE_PROGRAM, vers: 1, proc, type: MessageType.MESSAGE, serial: p.header.serial, status: 0 }, u32(v));
        sock.write(Buffer.concat([ev(318, 1), ev(331, 2), ev(318, 3)]));
        return;
      }
      // The second call: by now the client has seen the events; answer both.
      sock.write(Buffer.concat([reply(first, u32(100)), reply(p, u32(200))]));
    });
    const c = await RpcClient.connect(d.path);
    const got318: number[] = [];
    const got331: number[] = [];
    const headers: number[] = [];
    const off318 = c.onMessage(318, (payload, header) => {
      got318.push(readU32(payload));
      headers.push(header.type);
    });
    c.onMessage(331, (payload) => got331.push(readU32(payload)));
    // A listener that throws does not break delivery or the connection.
    c.onMessage(318, () => {
      throw new Error("listener bug");
    });
    try {
      const firstCall = c.call(316, u32(0));
      await until("the events arrive", () => got318.length === 2);
      assert.equal(c.inFlight, 1);
      const [a, b] = await Promise.all([firstCall, c.call(4, undefined)]);
      assert.equal(readU32(a), 100);
      assert.equal(readU32(b), 200);
      assert.deepEqual(got318, [1, 3]);
      assert.deepEqual(got331, [2]);
      assert.deepEqual(headers, [MessageType.MESSAGE, MessageType.MESSAGE]);
      off318();
    } finally {
      await c.close();
      await d.close();
    }
  });

  it("rejects every pending call with ConnectionClosedError when the daemon drops the connection", async () => {
    const d = await fakeDaemon((p, sock) => {
      if (calls(d).length === 3) sock.destroy();
    });
    const c = await RpcClient.connect(d.path);
    const results = await Promise.allSettled([c.call(1, undefined), c.call(2, undefined), c.call(3, undefined)]);
    for (const r of results) {
      assert.equal(r.status, "rejected");
      assert.ok(r.reason instanceof ConnectionClosedError, String(r.reason));
    }
    const reason = await c.closed;
    assert.ok(reason instanceof ConnectionClosedError);
    assert.equal(c.isClosed, true);
    assert.equal(c.inFlight, 0);
    // Calls after the end fail at once, without a socket to write to.
    await assert.rejects(c.call(4, undefined), ConnectionClosedError);
    await c.close();
    await d.close();
  });

  it("an aborted call rejects with the signal's reason; the others and the connection carry on", async () => {
    const pending: Packet[] = [];
    const d = await fakeDaemon((p, sock) => {
      // The first three are answered together, once the third is in; later calls at once.
      if (pending.length >= 3) return void sock.write(reply(p, p.payload));
      pending.push(p);
      if (pending.length === 3) sock.write(Buffer.concat(pending.map((q) => reply(q, q.payload))));
    });
    const c = await RpcClient.connect(d.path);
    try {
      const ac = new AbortController();
      const a = c.call(212, u32(1));
      const b = c.call(212, u32(2), { signal: ac.signal });
      ac.abort(new Error("caller gave up"));
      await assert.rejects(b, /caller gave up/);
      const third = c.call(212, u32(3));
      // The daemon still answers the aborted call (libvirt cannot cancel); that reply is dropped.
      assert.deepEqual(await Promise.all([a, third].map((p) => p.then(readU32))), [1, 3]);
      assert.equal(c.inFlight, 0);
      assert.equal(calls(d).length, 3);
      // Already aborted: rejected without sending anything.
      await assert.rejects(c.call(212, u32(4), { signal: AbortSignal.abort(new Error("too late")) }), /too late/);
      assert.equal(calls(d).length, 3);
      assert.equal(readU32(await c.call(212, u32(5))), 5);
      assert.equal(c.isClosed, false);
    } finally {
      await c.close();
      await d.close();
    }
  });

  it("drops the connection on a bad length word, with the PacketError as the cause", async () => {
    const d = await fakeDaemon((_p, sock) => void sock.write(Buffer.from([0, 0, 0, 4, 1, 2, 3, 4])));
    const c = await RpcClient.connect(d.path);
    const e = await c.call(1, undefined).then(
      () => assert.fail("resolved"),
      (e: unknown) => e,
    );
    assert.ok(e instanceof ConnectionClosedError);
    assert.ok(e.cause instanceof PacketError);
    assert.equal(await c.closed, e);
    await d.close();
  });

  it("rejects a reply whose procedure is not the call's", async () => {
    const d = await fakeDaemon(
      (p, sock) => void sock.write(encodePacket({ ...p.header, proc: p.header.proc + 1, type: MessageType.REPLY })),
    );
    const c = await RpcClient.connect(d.path);
    try {
      await assert.rejects(c.call(7, undefined), PacketError);
    } finally {
      await c.close();
      await d.close();
    }
  });

  it("close() rejects pending calls, resolves `closed`, and is idempotent", async () => {
    const d = await fakeDaemon(() => undefined);
    const c = await RpcClient.connect(d.path);
    const pending = c.call(1, undefined);
    await until("the daemon has the call", () => calls(d).length === 1);
    const rejected = assert.rejects(pending, ConnectionClosedError);
    await c.close();
    await rejected;
    assert.match((await c.closed).message, /closed by the client/);
    await c.close();
    await d.close();
  });

  it("onClose runs once with the reason, also when subscribed after the end", async () => {
    const d = await fakeDaemon((_p, sock) => sock.destroy());
    const c = await RpcClient.connect(d.path);
    const seen: Error[] = [];
    c.onClose((e) => seen.push(e));
    await assert.rejects(c.call(1, undefined), ConnectionClosedError);
    const late = await new Promise<Error>((resolve) => c.onClose(resolve));
    assert.equal(seen.length, 1);
    assert.equal(late, seen[0]);
    await d.close();
  });

  it("connect rejects with the socket's error when nobody listens, and honours an abort", async () => {
    await assert.rejects(RpcClient.connect(join(dir, "nobody.sock")), { code: "ENOENT" });
    await assert.rejects(RpcClient.connect(join(dir, "nobody.sock"), { signal: AbortSignal.abort(new Error("stop")) }), /stop/);
  });
});
