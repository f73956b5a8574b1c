import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import * as http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { RefusalThrottle } from "./refusal-throttle.js";
import { Server } from "./server.js";

/** A request on `socket` answered with `status` (just what the throttle looks at). */
function answered(t: RefusalThrottle, socket: object, status: number, grpc?: string) {
  const req = { socket } as unknown as Parameters<RefusalThrottle["watch"]>[0];
  const res = Object.assign(new EventEmitter(), { statusCode: status, getHeader: () => grpc }) as unknown as Parameters<
    RefusalThrottle["watch"]
  >[1];
  const wait = t.delay(req);
  t.watch(req, res);
  res.emit("finish");
  return wait;
}

describe("refusal throttle", () => {
  it("lets a connection collect a burst of refusals, then makes each request wait for the next token", () => {
    let now = 0;
    const t = new RefusalThrottle({ burst: 3, perSecond: 10 }, () => now);
    const garbage = {};
    const honest = {};
    assert.deepEqual(
      [1, 2, 3].map(() => answered(t, garbage, 400)),
      [0, 0, 0],
    );
    // The burst is used: each further request waits for its token (10 a second).
    assert.equal(answered(t, garbage, 400), 100);
    assert.equal(answered(t, garbage, 400), 200, "a refusal while in debt deepens it");
    assert.equal(answered(t, honest, 200), 0, "another connection is not slowed");
    now += 1000; // ten tokens later: full again (at most the burst of 3)
    assert.equal(answered(t, garbage, 200, "0"), 0);
    assert.equal(answered(t, garbage, 200, "3"), 0, "a gRPC error in the headers counts too");
    assert.equal(answered(t, garbage, 503), 0);
    assert.equal(answered(t, garbage, 200), 0, "a success costs nothing");
    assert.equal(answered(t, garbage, 404), 0);
    assert.equal(answered(t, garbage, 200), 100);
  });
});

describe("refusal throttle in the server", () => {
  let dir: string;
  let store: Store;
  let server: Server;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-throttle-"));
    store = await openEmbeddedStore(join(dir, "store"));
    server = new Server({
      store,
      host: "127.0.0.1",
      port: 0,
      version: "test",
      access: "none",
      controllers: false,
      refusals: { burst: 5, perSecond: 5 },
    });
    await server.start();
  });

  after(async () => {
    await server.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const throttled = async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    return Number(/hypervisor_api_refused_total\{reason="throttled"\} (\d+)/.exec(text)?.[1] ?? 0);
  };

  it("slows the connection that keeps being refused, and only that one", async () => {
    const before = await throttled();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const post = (body: string) =>
      new Promise<number>((resolve, reject) => {
        const req = http.request(
          `${server.url}/hypervisor.v1.InstanceService/GetInstance`,
          { method: "POST", agent, headers: { "content-type": "application/json" } },
          (res) => {
            res.resume();
            res.on("end", () => resolve(res.statusCode ?? 0));
          },
        );
        req.on("error", reject);
        req.end(body);
      });
    const codes: number[] = [];
    for (let i = 0; i < 12; i++) codes.push(await post("{not json"));
    assert.ok(
      codes.every((c) => c === 400),
      `every one refused as malformed: ${codes.join(",")}`,
    );
    const after = await throttled();
    assert.ok(after - before >= 6, `the requests past the burst of 5 waited (${after - before} did)`);
    // A fresh connection (fetch's own pool) is answered without waiting.
    const fresh = await throttled();
    assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
    assert.equal(await throttled(), fresh);
    agent.destroy();
  });
});
