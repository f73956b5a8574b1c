// ImportImage streams the upload on to the nodes as it comes (the server keeps none of it) and
// stops at max-image-bytes. The node end here is an AgentService that only counts bytes, standing
// in for the agent so the test can see when bytes arrive; test/e2e/containerd.test.ts imports
// through a real agent.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import * as http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import { AgentService } from "../../api/gen/hypervisor/v1/agent_pb.js";
import { ImageService, ImportImageRequestSchema, ImportTargetSchema } from "../../api/gen/hypervisor/v1/image_pb.js";
import { NodeSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import { AgentEndpointSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { Server } from "./server.js";

interface Upload {
  received: number;
  completed: boolean;
  aborted: boolean;
}

describe("image import streams to the nodes and is bounded", () => {
  let dir: string;
  let store: Store;
  let server: Server;
  let sink: http2.Http2Server;
  const uploads: Upload[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-image-stream-"));
    store = await openEmbeddedStore(join(dir, "store"));
    const handler = connectNodeAdapter({
      routes: (router) =>
        router.service(AgentService, {
          async importImage(requests) {
            const u: Upload = { received: 0, completed: false, aborted: false };
            uploads.push(u);
            try {
              for await (const r of requests) if (r.part.case === "chunk") u.received += r.part.value.length;
            } catch (e) {
              u.aborted = true;
              throw e;
            }
            u.completed = true;
            return { images: [{ name: "img:1", digest: "sha256:00", sizeBytes: BigInt(u.received), driver: "containerd" }] };
          },
        }),
    });
    sink = http2.createServer(handler);
    await new Promise<void>((resolve) => sink.listen(0, "127.0.0.1", resolve));
    const port = (sink.address() as { port: number }).port;
    const node = create(NodeSchema, {
      name: "n1",
      drivers: [{ name: "containerd", healthy: true }],
      capacity: { vcpus: 4, memoryMib: 4096n },
    });
    await store.put(keys.node("n1"), toBinary(NodeSchema, node));
    await store.put(keys.alive("n1"), new Uint8Array([1]));
    await store.put(
      keys.endpoint("n1"),
      toBinary(AgentEndpointSchema, create(AgentEndpointSchema, { url: `http://127.0.0.1:${port}`, token: "t" })),
    );
    server = new Server({
      store,
      host: "127.0.0.1",
      port: 0,
      version: "test",
      access: "none",
      controllers: false,
      maxImageBytes: 64 * 1024,
    });
    await server.start();
  });

  after(async () => {
    await server.stop();
    await new Promise((resolve) => sink.close(resolve));
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const images = () => createClient(ImageService, createGrpcTransport({ baseUrl: server.url }));
  const target = { case: "target" as const, value: create(ImportTargetSchema, { nodes: ["n1"] }) };
  const chunk = (n: number) => ({ case: "chunk" as const, value: new Uint8Array(n).fill(7) });

  it("passes each chunk on before the next one is sent (nothing spooled whole)", async () => {
    uploads.length = 0;
    const res = await images().importImage(
      (async function* () {
        yield create(ImportImageRequestSchema, { part: target });
        for (let i = 1; i <= 3; i++) {
          yield create(ImportImageRequestSchema, { part: chunk(10_000) });
          // The next chunk goes only once this one reached the node: a server that spooled the
          // upload would pass nothing on before the end, and this wait would run out.
          for (let t = 0; t < 400 && (uploads[0]?.received ?? 0) < i * 10_000; t++) await new Promise((r) => setTimeout(r, 25));
          if ((uploads[0]?.received ?? 0) < i * 10_000) throw new Error(`chunk ${i} did not reach the node while the upload went on`);
        }
      })(),
    );
    assert.equal(res.results[0]?.images[0]?.sizeBytes, 30_000n);
    assert.equal(uploads.length, 1);
    assert.equal(uploads[0]!.completed, true);
  });

  it("refuses an upload over max-image-bytes with ResourceExhausted and aborts the node's upload", async () => {
    uploads.length = 0;
    const err = await images()
      .importImage(
        (async function* () {
          yield create(ImportImageRequestSchema, { part: target });
          for (let i = 0; i < 20; i++) yield create(ImportImageRequestSchema, { part: chunk(8192) });
        })(),
      )
      .catch((e: unknown) => ConnectError.from(e));
    assert.ok(err instanceof ConnectError);
    assert.equal(err.code, Code.ResourceExhausted, err.message);
    assert.match(err.rawMessage, /over the server's max-image-bytes of 65536 bytes/);
    for (let t = 0; t < 400 && uploads[0] && !uploads[0].aborted; t++) await new Promise((r) => setTimeout(r, 25));
    assert.equal(uploads[0]?.completed, false);
    assert.equal(uploads[0]?.aborted, true);
    assert.ok(uploads[0].received <= 64 * 1024);
  });
});
