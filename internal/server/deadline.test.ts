// A unary call whose handler is stuck (here: on a store that stops answering) gets
// DeadlineExceeded after the server's unary-timeout instead of holding its client forever.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { InstanceService } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { Server } from "./server.js";

describe("unary deadline", () => {
  let dir: string;
  let store: Store;
  let server: Server;
  let stuck = false;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-deadline-"));
    store = await openEmbeddedStore(join(dir, "store"));
    // A store whose reads never answer once `stuck` is set, as a partitioned etcd would.
    const hanging = new Proxy(store, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (prop === "get" && typeof v === "function")
          return (...args: unknown[]) => (stuck ? new Promise(() => undefined) : (v as (...a: unknown[]) => unknown).apply(target, args));
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    server = new Server({
      store: hanging,
      host: "127.0.0.1",
      port: 0,
      version: "test",
      access: "none",
      controllers: false,
      unaryTimeoutMs: 300,
    });
    await server.start();
  });

  after(async () => {
    await server.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("answers DeadlineExceeded when a handler does not finish", async () => {
    const client = createClient(InstanceService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const missing = await client.getInstance({ name: "nope" }).catch((e: unknown) => ConnectError.from(e));
    assert.ok(missing instanceof ConnectError);
    assert.equal(missing.code, Code.NotFound);
    stuck = true;
    const err = await client.getInstance({ name: "nope" }).catch((e: unknown) => ConnectError.from(e));
    assert.ok(err instanceof ConnectError);
    assert.equal(err.code, Code.DeadlineExceeded);
    assert.match(err.rawMessage, /longer than the server's limit/);
  });
});
