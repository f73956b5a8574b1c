// Strict input on a real listening server (embedded store and a real etcd): every refusal is an
// InvalidArgument naming the field, over Connect (JSON and binary), gRPC and gRPC-Web, and leaves
// the store revision where it was.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { connect as http2Connect } from "node:http2";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import {
  CreateInstanceRequestSchema,
  InstanceService,
  Phase,
  PowerState,
  RestartPolicy,
  type TaintEffect,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { openEtcdStore } from "../../pkg/cluster/etcd/index.js";
import { startEtcd, type EtcdProcess } from "../../test/support/etcd.js";
import { Server } from "./server.js";

const CREATE = "/hypervisor.v1.InstanceService/CreateInstance";
const GOOD_SPEC = { driver: "mock", vcpus: 1, memoryMib: 64n };
// Field 1 (name), length 5, then only one byte: a truncated message.
const TRUNCATED = new Uint8Array([0x0a, 0x05, 0x61]);

function envelope(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + payload.byteLength);
  new DataView(out.buffer).setUint32(1, payload.byteLength);
  out.set(payload, 5);
  return out;
}

/** A raw gRPC call over h2c: the status and message from the trailers (or trailers-only headers). */
async function rawGrpc(url: string, path: string, body: Uint8Array): Promise<{ status: string; message: string }> {
  const session = http2Connect(url);
  try {
    return await new Promise((resolve, reject) => {
      const req = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" });
      const headers: Record<string, string> = {};
      const keep = (h: Record<string, unknown>) => {
        for (const k of ["grpc-status", "grpc-message"]) if (typeof h[k] === "string") headers[k] = h[k];
      };
      req.on("response", keep);
      req.on("trailers", keep);
      req.on("data", () => undefined);
      req.on("end", () => resolve({ status: headers["grpc-status"] ?? "", message: decodeURIComponent(headers["grpc-message"] ?? "") }));
      req.on("error", reject);
      req.end(body);
    });
  } finally {
    session.close();
  }
}

function refusedWith(code: Code, message: RegExp) {
  return (e: unknown) => {
    const ce = ConnectError.from(e);
    assert.equal(Code[ce.code], Code[code], ce.message);
    assert.match(ce.rawMessage, message);
    return true;
  };
}

for (const kind of ["embedded", "etcd"] as const)
  describe(`strict input on the ${kind} store`, () => {
    let dir: string;
    let etcd: EtcdProcess | undefined;
    let store: Store;
    let server: Server;
    let json: Client<typeof InstanceService>;
    let binary: Client<typeof InstanceService>;

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), "hv-strict-"));
      if (kind === "etcd") {
        etcd = await startEtcd();
        store = await openEtcdStore({ endpoints: [etcd.endpoint] });
      } else store = await openEmbeddedStore(join(dir, "store"));
      server = new Server({ store, host: "127.0.0.1", port: 0, version: "test", access: "none", controllers: false });
      await server.start();
      json = createClient(InstanceService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
      binary = createClient(InstanceService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: true }));
    });

    after(async () => {
      await server.stop();
      await store.close();
      await etcd?.stop();
      await rm(dir, { recursive: true, force: true });
    });

    it("refuses enum numbers the enum does not declare, anywhere in the request, in JSON and binary", async () => {
      const rev = await store.revision();
      for (const client of [json, binary]) {
        await assert.rejects(
          client.createInstance({ name: "enum-a", spec: { ...GOOD_SPEC, restartPolicy: 99 as RestartPolicy } }),
          refusedWith(Code.InvalidArgument, /^spec\.restart_policy: 99 is not a RestartPolicy$/),
        );
        await assert.rejects(
          client.createInstance({ name: "enum-b", spec: { ...GOOD_SPEC, desiredPowerState: 7 as PowerState } }),
          refusedWith(Code.InvalidArgument, /^spec\.desired_power_state: 7 is not a PowerState$/),
        );
        // Nested in a repeated message of a message of a repeated message.
        await assert.rejects(
          client.createInstances({
            instances: [
              { name: "enum-c", spec: GOOD_SPEC },
              { name: "enum-d", spec: { ...GOOD_SPEC, placement: { tolerations: [{ key: "k", effect: 9 as TaintEffect }] } } },
            ],
          }),
          refusedWith(Code.InvalidArgument, /^instances\[1\]\.spec\.placement\.tolerations\[0\]\.effect: 9 is not a TaintEffect$/),
        );
        // A server-streaming method's request goes through the same check.
        await assert.rejects(
          (async () => {
            for await (const _ of client.watchInstances({ filter: { phase: 42 as Phase } })) break;
          })(),
          refusedWith(Code.InvalidArgument, /^filter\.phase: 42 is not a Phase$/),
        );
      }
      assert.equal(await store.revision(), rev, "a refused request wrote to the store");
    });

    it("refuses unknown enum names and unknown keys in JSON, naming them", async () => {
      const rev = await store.revision();
      const post = (body: unknown) =>
        fetch(`${server.url}${CREATE}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
      const spec = { driver: "mock", vcpus: 1, memoryMib: "64" };
      for (const [body, message] of [
        [
          { name: "json-a", spec: { ...spec, restartPolicy: "RESTART_POLICY_SOMETIMES" } },
          /RestartPolicy from JSON: "RESTART_POLICY_SOMETIMES"/,
        ],
        [{ name: "json-b", spec: { ...spec, memoryMiB: "64" } }, /key "memoryMiB" is unknown/],
        [{ name: "json-c", colour: "blue", spec }, /key "colour" is unknown/],
      ] as const) {
        const res = await post(body);
        const err = (await res.json()) as { code: string; message: string };
        assert.equal(res.status, 400, JSON.stringify(err));
        assert.equal(err.code, "invalid_argument");
        assert.match(err.message, message);
      }
      const res = await fetch(`${server.url}${CREATE}`, { method: "POST", headers: { "content-type": "application/json" }, body: "{nope" });
      assert.equal(res.status, 400);
      assert.equal(((await res.json()) as { code: string }).code, "invalid_argument");
      assert.equal(await store.revision(), rev);
    });

    it("refuses unknown fields in binary, top level and nested, so none is stored and echoed back", async () => {
      const rev = await store.revision();
      const top = create(CreateInstanceRequestSchema, { name: "bin-a", spec: GOOD_SPEC });
      top.$unknown = [{ no: 99, wireType: WireType.Varint, data: new Uint8Array([1]) }];
      await assert.rejects(
        binary.createInstance(top),
        refusedWith(Code.InvalidArgument, /^hypervisor\.v1\.CreateInstanceRequest: unknown field 99 /),
      );
      const nested = create(CreateInstanceRequestSchema, { name: "bin-b", spec: GOOD_SPEC });
      nested.spec!.$unknown = [
        { no: 40, wireType: WireType.LengthDelimited, data: new Uint8Array([3, 0x61, 0x62, 0x63]) },
        { no: 41, wireType: WireType.Varint, data: new Uint8Array([1]) },
      ];
      await assert.rejects(binary.createInstance(nested), refusedWith(Code.InvalidArgument, /^spec: unknown fields 40, 41 /));
      assert.equal(await store.revision(), rev, "a refused request wrote to the store");
      await assert.rejects(binary.getInstance({ name: "bin-b" }), refusedWith(Code.NotFound, /bin-b/));
    });

    it("answers a malformed binary body with InvalidArgument over Connect, gRPC and gRPC-Web, never internal", async () => {
      const rev = await store.revision();
      const connect = await fetch(`${server.url}${CREATE}`, {
        method: "POST",
        headers: { "content-type": "application/proto" },
        body: TRUNCATED,
      });
      const err = (await connect.json()) as { code: string; message: string };
      assert.equal(connect.status, 400, JSON.stringify(err));
      assert.equal(err.code, "invalid_argument");
      assert.match(err.message, /^malformed request: /);

      const grpc = await rawGrpc(server.url, CREATE, envelope(TRUNCATED));
      assert.equal(grpc.status, String(Code.InvalidArgument), grpc.message);
      assert.match(grpc.message, /^malformed request: /);

      const web = await fetch(`${server.url}${CREATE}`, {
        method: "POST",
        headers: { "content-type": "application/grpc-web+proto" },
        body: envelope(TRUNCATED),
      });
      const text = Buffer.from(await web.arrayBuffer())
        .subarray(5)
        .toString();
      assert.match(text, /grpc-status: 3\r\n/);
      assert.match(text, /grpc-message: malformed%20request/);

      // An envelope flagged compressed when no compression was negotiated: the client's mistake too.
      const compressed = envelope(TRUNCATED);
      compressed[0] = 1;
      const unary = await rawGrpc(server.url, "/hypervisor.v1.NodeService/GetNode", compressed);
      assert.equal(unary.status, String(Code.InvalidArgument), unary.message);
      assert.match(unary.message, /^malformed request: received compressed envelope/);
      const streamed = await rawGrpc(server.url, "/hypervisor.v1.InstanceService/WatchInstances", compressed);
      assert.equal(streamed.status, String(Code.InvalidArgument), streamed.message);
      const webCompressed = await fetch(`${server.url}/hypervisor.v1.NodeService/GetNode`, {
        method: "POST",
        headers: { "content-type": "application/grpc-web+proto" },
        body: compressed,
      });
      assert.match(
        Buffer.from(await webCompressed.arrayBuffer())
          .subarray(5)
          .toString(),
        /grpc-status: 3\r\n/,
      );

      // A server-streaming method reads its request through the interceptors.
      const watch = await rawGrpc(server.url, "/hypervisor.v1.InstanceService/WatchInstances", envelope(TRUNCATED));
      assert.equal(watch.status, String(Code.InvalidArgument), watch.message);
      assert.equal(await store.revision(), rev);
    });

    it("still serves good requests over every protocol", async () => {
      for (const [i, t] of [
        createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: true }),
        createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
        createGrpcTransport({ baseUrl: server.url }),
        createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }),
      ].entries()) {
        const c = createClient(InstanceService, t);
        const name = `ok-${i}`;
        const made = await c.createInstance({
          name,
          spec: { ...GOOD_SPEC, restartPolicy: RestartPolicy.ALWAYS, desiredPowerState: PowerState.RUNNING },
        });
        assert.equal(made.instance?.spec?.restartPolicy, RestartPolicy.ALWAYS);
        assert.equal((await c.getInstance({ name })).instance?.name, name);
        await c.deleteInstance({ name });
      }
    });

    it("checks the binary encoding of a request built by hand", () => {
      // Sanity of the fixture: the client library would send the unknown field as written.
      const m = create(CreateInstanceRequestSchema, { name: "x" });
      m.$unknown = [{ no: 99, wireType: WireType.Varint, data: new Uint8Array([1]) }];
      assert.deepEqual([...toBinary(CreateInstanceRequestSchema, m).slice(-3)], [0x98, 0x06, 0x01]);
    });
  });
