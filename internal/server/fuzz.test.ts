/*
 * A bounded, seeded fuzz of the API's edge: random and mutated requests to every method of every
 * service, over Connect (JSON and binary, unary and streaming), gRPC and gRPC-Web; raw TCP
 * fragments of HTTP/1.1 requests and of the HTTP/2 preface; slow writers and readers.
 *
 * It asserts what a hostile client must never achieve: a 5xx (or gRPC INTERNAL/UNKNOWN/UNAVAILABLE),
 * a server that stops answering, or a write left behind by a refused call (the store revision is
 * compared around each one). Reproduce a failure with HYPERVISOR_FUZZ_SEED=<seed printed>; size it
 * with HYPERVISOR_FUZZ_CASES (default 2,500 requests plus 300 raw connections).
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  create,
  type DescField,
  type DescMessage,
  type DescMethod,
  type DescService,
  ScalarType,
  toBinary,
  toJson,
} from "@bufbuild/protobuf";
import { ClusterService } from "../../api/gen/hypervisor/v1/cluster_pb.js";
import { ConsoleService } from "../../api/gen/hypervisor/v1/console_pb.js";
import { ImageService } from "../../api/gen/hypervisor/v1/image_pb.js";
import { InstanceService } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeService } from "../../api/gen/hypervisor/v1/node_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { Server } from "./server.js";

const SERVICES: DescService[] = [ClusterService, ConsoleService, ImageService, InstanceService, NodeService];
const SEED = Number(process.env.HYPERVISOR_FUZZ_SEED ?? 20261204);
const CASES = Number(process.env.HYPERVISOR_FUZZ_CASES ?? 2500);
const RAW_CASES = Math.max(50, Math.round(CASES / 8));

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const chance = (p: number) => next() < p;
  return { next, int, pick, chance };
}
type Rng = ReturnType<typeof rng>;

const STRINGS = [
  "",
  "a",
  "web-1",
  "fz-1",
  "mock",
  "libvirt",
  "containerd",
  "../../etc/passwd",
  "<domain/>",
  "a'b\"c",
  "x".repeat(300),
  "é🙂",
  "\u0000",
  "app=web",
  "bridge:br0",
  "host",
  " ",
];
const NUMBERS = [0, 1, -1, 2, 7, 99, 255, 65536, 2 ** 31 - 1, -(2 ** 31), 2 ** 32 - 1];
const BIGS = [0n, 1n, -1n, 64n, 2n ** 31n, 2n ** 53n, 2n ** 63n - 1n, -(2n ** 63n)];

function scalar(r: Rng, t: ScalarType): unknown {
  switch (t) {
    case ScalarType.STRING:
      return r.pick(STRINGS);
    case ScalarType.BYTES:
      return Uint8Array.from({ length: r.int(8) }, () => r.int(256));
    case ScalarType.BOOL:
      return r.chance(0.5);
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return r.pick(BIGS);
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return r.pick(BIGS.filter((b) => b >= 0n));
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return r.pick([0, 1.5, -3, 1e308, Number.NaN]);
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return r.pick(NUMBERS.filter((n) => n >= 0));
    default:
      // int32 and its kin: protobuf-es refuses to encode more than 2^31-1.
      return r.pick(NUMBERS.filter((n) => n <= 2 ** 31 - 1));
  }
}

/** A random init object for `desc`: known fields with edge values, unknown enum numbers sometimes. */
function randomInit(r: Rng, desc: DescMessage, depth = 0): Record<string, unknown> {
  const init: Record<string, unknown> = {};
  const oneofs = new Set<string>();
  for (const f of desc.fields) {
    if (!r.chance(depth === 0 ? 0.7 : 0.4)) continue;
    if (f.oneof) {
      if (oneofs.has(f.oneof.localName)) continue;
      oneofs.add(f.oneof.localName);
      const v = value(r, f, depth);
      if (v !== undefined) init[f.oneof.localName] = { case: f.localName, value: v };
      continue;
    }
    const v = value(r, f, depth);
    if (v !== undefined) init[f.localName] = v;
  }
  return init;
}

function enumValue(r: Rng, f: { enum: { values: { number: number }[] } }): number {
  return r.chance(0.85) ? r.pick(f.enum.values).number : r.pick([7, 99, -1, 1000]);
}

function value(r: Rng, f: DescField, depth: number): unknown {
  switch (f.fieldKind) {
    case "scalar":
      return scalar(r, f.scalar);
    case "enum":
      return enumValue(r, f);
    case "message":
      return depth > 3 ? undefined : randomInit(r, f.message, depth + 1);
    case "list": {
      const n = r.int(4);
      if (f.listKind === "scalar") return Array.from({ length: n }, () => scalar(r, f.scalar));
      if (f.listKind === "enum") return Array.from({ length: n }, () => enumValue(r, f));
      return depth > 3 ? [] : Array.from({ length: n }, () => randomInit(r, f.message, depth + 1));
    }
    case "map": {
      const out: Record<string, unknown> = {};
      for (let i = r.int(4); i > 0; i--) {
        const k = f.mapKey === ScalarType.STRING ? r.pick(STRINGS) : String(r.pick(NUMBERS.filter((n) => n >= 0)));
        out[k] =
          f.mapKind === "scalar"
            ? scalar(r, f.scalar)
            : f.mapKind === "enum"
              ? enumValue(r, f)
              : depth > 3
                ? {}
                : randomInit(r, f.message, depth + 1);
      }
      return out;
    }
  }
}

function mutateBytes(r: Rng, b: Uint8Array): Uint8Array {
  const out = [...b];
  for (let i = 1 + r.int(4); i > 0; i--) {
    const op = r.int(5);
    const at = r.int(out.length + 1);
    if (op === 0 && out.length) out[at % out.length] = r.int(256);
    else if (op === 1) out.splice(at, 0, ...Array.from({ length: 1 + r.int(6) }, () => r.int(256)));
    else if (op === 2) out.splice(at, 1 + r.int(4));
    else if (op === 3) out.length = Math.min(out.length, at);
    else out.splice(at, 0, 0xff, 0xff, 0xff, 0xff, 0x0f); // a varint with a huge length
  }
  return Uint8Array.from(out);
}

function mutateJson(r: Rng, v: unknown, depth = 0): unknown {
  if (depth > 4) return v;
  if (v && typeof v === "object" && !Array.isArray(v)) {
    const o = { ...(v as Record<string, unknown>) };
    const keys = Object.keys(o);
    if (keys.length && r.chance(0.5)) {
      const k = r.pick(keys);
      o[k] = r.chance(0.5) ? mutateJson(r, o[k], depth + 1) : r.pick([null, 1, "x", [], {}, true, -1.5, "RESTART_POLICY_NOPE", 1e40]);
    }
    if (r.chance(0.2)) o[r.pick(["unknownField", "$typeName", "__proto__", "spec", "restartPolicy"])] = r.pick([1, "x", { a: 1 }]);
    return o;
  }
  return v;
}

interface Sent {
  protocol: string;
  method: string;
  body: Uint8Array;
}

interface Outcome {
  /** HTTP status, or gRPC status for gRPC and gRPC-Web, or a Connect error code. */
  ok: boolean;
  bad: string | undefined;
}

const envelope = (flags: number, data: Uint8Array) => {
  const b = Buffer.alloc(5 + data.length);
  b[0] = flags;
  b.writeUInt32BE(data.length, 1);
  b.set(data, 5);
  return b;
};

/** The Connect error code or gRPC status carried in a streamed answer's last frame, if any. */
function streamError(body: Buffer, grpcWeb: boolean): { code?: string | number; done: boolean } {
  let at = 0;
  while (at + 5 <= body.length) {
    const flags = body[at]!;
    const len = body.readUInt32BE(at + 1);
    if (at + 5 + len > body.length) break;
    const data = body.subarray(at + 5, at + 5 + len);
    if (grpcWeb && flags & 0x80) {
      const m = /grpc-status:\s*(\d+)/i.exec(data.toString());
      return { code: m ? Number(m[1]) : undefined, done: true };
    }
    if (!grpcWeb && flags & 0x02) {
      let end: { error?: { code?: string } } = {};
      try {
        end = JSON.parse(data.toString()) as typeof end;
      } catch {
        return { code: "malformed end-stream", done: true };
      }
      return { code: end.error?.code, done: true };
    }
    at += 5 + len;
  }
  return { done: false };
}

const FATAL_GRPC = new Set([2, 13, 14]); // UNKNOWN, INTERNAL, UNAVAILABLE
const FATAL_CONNECT = new Set(["unknown", "internal", "unavailable"]);

describe("fuzz: nothing a client sends gets a 5xx, stops the server, or writes on refusal", () => {
  let dir: string;
  let store: Store;
  let server: Server;
  let port: number;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-fuzz-"));
    store = await openEmbeddedStore(join(dir, "store"), { sync: false });
    // No controllers: every write comes from a fuzzed call, so a refused one must leave none.
    server = new Server({
      store,
      host: "127.0.0.1",
      port: 0,
      version: "fuzz",
      access: "none",
      controllers: false,
      limits: { headerTimeoutMs: 2000 },
      // Refusals are the point here: no connection is slowed for them (refusal-throttle.test.ts).
      refusals: { burst: 1_000_000 },
    });
    await server.start();
    port = Number(new URL(server.url).port);
  });

  after(async () => {
    await server.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function healthy(): Promise<void> {
    const res = await fetch(`${server.url}/healthz`, { signal: AbortSignal.timeout(15_000) });
    assert.equal(res.status, 200, "the server stopped answering /healthz");
    await res.text();
  }

  /** One request over HTTP/1.1 (Connect, gRPC-Web); reads a streaming answer for a moment only. */
  function h1(path: string, headers: Record<string, string>, body: Uint8Array, grpcWeb: boolean, streaming: boolean): Promise<Outcome> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        { host: "127.0.0.1", port, method: "POST", path, headers: { ...headers, "content-length": String(body.length) } },
        (res) => {
          const chunks: Buffer[] = [];
          const finish = () => {
            clearTimeout(timer);
            const all = Buffer.concat(chunks);
            const status = res.statusCode ?? 0;
            if (status >= 500) return resolve({ ok: false, bad: `HTTP ${status}: ${all.toString().slice(0, 200)}` });
            if (grpcWeb) {
              const head = res.headers["grpc-status"];
              const code = head !== undefined ? Number(head) : streamError(all, true).code;
              return resolve({
                ok: code === 0,
                bad:
                  typeof code === "number" && FATAL_GRPC.has(code)
                    ? `grpc-web status ${code} ${String(res.headers["grpc-message"] ?? "")}`
                    : undefined,
              });
            }
            if (streaming && status === 200) {
              const { code } = streamError(all, false);
              return resolve({
                ok: code === undefined,
                bad:
                  typeof code === "string" && FATAL_CONNECT.has(code)
                    ? `connect stream error ${code}: ${all.toString().slice(-200)}`
                    : undefined,
              });
            }
            let code: string | undefined;
            if (status !== 200) {
              try {
                code = (JSON.parse(all.toString()) as { code?: string }).code;
              } catch {
                code = undefined;
              }
            }
            resolve({
              ok: status === 200,
              bad: code && FATAL_CONNECT.has(code) ? `connect ${code}: ${all.toString().slice(0, 200)}` : undefined,
            });
          };
          // A watch that was accepted stays open: take what came within a moment, then hang up.
          const timer = setTimeout(() => {
            res.destroy();
            finish();
          }, 300);
          res.on("data", (b: Buffer) => chunks.push(b));
          res.on("end", finish);
          res.on("error", () => undefined);
        },
      );
      req.on("error", reject);
      req.end(body);
    });
  }

  let session: http2.ClientHttp2Session | undefined;
  function grpc(path: string, body: Uint8Array): Promise<Outcome> {
    if (!session || session.closed || session.destroyed) {
      session = http2.connect(server.url);
      session.on("error", () => undefined);
    }
    const s = session;
    return new Promise((resolve) => {
      const stream = s.request({ ":method": "POST", ":path": path, "content-type": "application/grpc+proto", te: "trailers" });
      let status: number | undefined;
      let message = "";
      let httpStatus = 0;
      const timer = setTimeout(() => stream.close(http2.constants.NGHTTP2_CANCEL), 300);
      stream.on("response", (h) => {
        httpStatus = Number(h[":status"]);
        if (h["grpc-status"] !== undefined) status = Number(h["grpc-status"]);
        message = String(h["grpc-message"] ?? "");
      });
      stream.on("trailers", (t: http2.IncomingHttpHeaders) => {
        status = Number(t["grpc-status"]);
        message = String(t["grpc-message"] ?? "");
      });
      stream.on("data", () => undefined);
      stream.on("error", () => undefined);
      stream.on("close", () => {
        clearTimeout(timer);
        if (httpStatus >= 500) return resolve({ ok: false, bad: `HTTP ${httpStatus} over gRPC` });
        resolve({
          ok: status === 0 || status === undefined,
          bad: status !== undefined && FATAL_GRPC.has(status) ? `grpc status ${status}: ${decodeURIComponent(message)}` : undefined,
        });
      });
      stream.end(body);
    });
  }

  function build(r: Rng, method: DescMethod): Sent {
    const streaming = method.methodKind !== "unary";
    const msg = create(method.input, randomInit(r, method.input) as never);
    const protocol = r.pick(["connect-json", "connect-proto", "grpc", "grpc-web"] as const);
    let body: Uint8Array;
    if (protocol === "connect-json") {
      let json: unknown;
      try {
        json = toJson(method.input, msg);
      } catch {
        json = {};
      }
      const text = r.chance(0.1)
        ? r.pick(["", "{", "[]", "null", '{"a":', "{".repeat(2000)])
        : JSON.stringify(r.chance(0.6) ? mutateJson(r, json) : json);
      body = Buffer.from(text);
    } else {
      const bin = toBinary(method.input, msg);
      body = r.chance(0.5) ? mutateBytes(r, bin) : bin;
    }
    if (streaming || protocol === "grpc" || protocol === "grpc-web") {
      const frames = [envelope(r.chance(0.05) ? r.pick([1, 2, 0x80]) : 0, body)];
      if (method.methodKind === "client_streaming" && r.chance(0.5)) frames.push(envelope(0, mutateBytes(r, body)));
      if (protocol.startsWith("connect") && method.methodKind !== "server_streaming" && r.chance(0.3)) frames.length = 1;
      body = Buffer.concat(frames);
      if (r.chance(0.05)) body = body.subarray(0, r.int(body.length + 1));
    }
    return { protocol, method: `/${method.parent.typeName}/${method.name}`, body };
  }

  async function send(s: Sent, streaming: boolean): Promise<Outcome> {
    switch (s.protocol) {
      case "connect-json":
        return h1(s.method, { "content-type": streaming ? "application/connect+json" : "application/json" }, s.body, false, streaming);
      case "connect-proto":
        return h1(s.method, { "content-type": streaming ? "application/connect+proto" : "application/proto" }, s.body, false, streaming);
      case "grpc-web":
        return h1(s.method, { "content-type": "application/grpc-web+proto" }, s.body, true, streaming);
      default:
        return grpc(s.method, s.body);
    }
  }

  it(`${CASES} random and mutated requests to every method, in every protocol (seed ${SEED})`, async () => {
    const r = rng(SEED);
    const methods = SERVICES.flatMap((s) => s.methods);
    const tried = new Map<string, number>();
    const failures: string[] = [];
    for (let i = 0; i < CASES; i++) {
      // Every method first, then random ones.
      const method = i < methods.length ? methods[i]! : r.pick(methods);
      const sent = build(r, method);
      const before = await store.revision();
      const out = await send(sent, method.methodKind !== "unary");
      const afterRev = await store.revision();
      tried.set(sent.method, (tried.get(sent.method) ?? 0) + 1);
      const where = `case ${i} (seed ${SEED}): ${sent.protocol} ${sent.method} ${Buffer.from(sent.body.subarray(0, 120)).toString("base64")}`;
      if (out.bad) failures.push(`${where}: ${out.bad}`);
      else if (!out.ok && afterRev !== before)
        failures.push(`${where}: refused, yet the store moved from revision ${before} to ${afterRev}`);
      if (failures.length >= 5) break;
      if (i % 250 === 0) await healthy();
    }
    session?.close();
    assert.deepEqual(failures, []);
    assert.equal(tried.size, methods.length, "every method was tried");
    await healthy();
  });

  it(`${RAW_CASES} raw fragments of HTTP/1.1 requests and of the HTTP/2 preface, slow writers and a reader that never reads`, async () => {
    const r = rng(SEED + 1);
    const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const requests = [
      `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`,
      `POST /hypervisor.v1.ClusterService/GetVersion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`,
      `POST /hypervisor.v1.InstanceService/WatchInstances HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/connect+json\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n\0\0\0\0\x02{}\r\n0\r\n\r\n`,
      `${preface}\0\0\0\x04\0\0\0\0\0`,
      `GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999\r\n\r\n`,
      `GET /${"a".repeat(20_000)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`,
    ];
    const held: net.Socket[] = [];
    for (let i = 0; i < RAW_CASES; i++) {
      const text = r.pick(requests);
      const cut = r.chance(0.2) ? text.length : r.int(text.length + 1);
      const bytes = Buffer.from(text.slice(0, cut), "latin1");
      const s = net.connect(port, "127.0.0.1");
      s.on("error", () => undefined);
      s.on("data", () => undefined);
      await new Promise<void>((resolve) => s.once("connect", () => resolve()));
      if (r.chance(0.1)) {
        // A slow writer: a byte at a time.
        for (const b of bytes.subarray(0, 40)) {
          s.write(Buffer.from([b]));
          await new Promise((res) => setTimeout(res, 5));
        }
      } else s.write(bytes);
      if (r.chance(0.1) && held.length < 20) held.push(s);
      else s.destroy();
      if (i % 25 === 0) await healthy();
    }
    // A reader that never reads: a response it does not take must not hold anything else up.
    const slow = net.connect(port, "127.0.0.1");
    slow.on("error", () => undefined);
    await new Promise<void>((resolve) => slow.once("connect", () => resolve()));
    slow.pause();
    for (let i = 0; i < 50; i++) slow.write(`GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
    await healthy();
    for (const s of [...held, slow]) s.destroy();
    await healthy();
  });
});
