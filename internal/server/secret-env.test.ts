import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { EventType, InstanceSchema, InstanceService, Phase } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { Agent } from "../../internal/agent/index.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { createMockDriver } from "../../pkg/compute/mock/index.js";
import { REDACTED } from "./secret-env.js";
import { Server } from "./server.js";

describe("secret environment values are write-only", () => {
  let dir: string;
  let store: Store;
  let server: Server;
  let agent: Agent;
  const abort = new AbortController();
  let clients: Client<typeof InstanceService>[];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-secret-"));
    store = await openEmbeddedStore(join(dir, "store"));
    server = new Server({ store, host: "127.0.0.1", port: 0, version: "test", access: "none" });
    await server.start();
    agent = new Agent({
      store,
      nodeName: "n1",
      drivers: [createMockDriver({ stateDir: join(dir, "n1", "mock") })],
      heartbeatTtlSeconds: 5,
      dataDir: join(dir, "n1"),
    });
    await agent.start(abort.signal);
    clients = [
      createClient(InstanceService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" })),
      createClient(InstanceService, createGrpcTransport({ baseUrl: server.url })),
    ];
  });

  after(async () => {
    abort.abort();
    await agent.stop();
    await server.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("answers every value as redacted in create, get, list, watch and mutations, while the node's driver gets it", async () => {
    const [connect, grpc] = clients as [Client<typeof InstanceService>, Client<typeof InstanceService>];
    const watch = new AbortController();
    const events = connect.watchInstances({}, { signal: watch.signal })[Symbol.asyncIterator]();
    const created = await connect.createInstance({
      name: "db-1",
      spec: { driver: "mock", vcpus: 1, memoryMib: 64n, env: { MODE: "prod" }, secretEnv: { DB_PASSWORD: "hunter2" } },
    });
    const seen = [created.instance];
    for (const c of clients) {
      seen.push((await c.getInstance({ name: "db-1" })).instance);
      seen.push(...(await c.listInstances({})).instances);
    }
    seen.push(
      (
        await grpc.createInstances({
          instances: [{ name: "db-2", spec: { driver: "mock", vcpus: 1, memoryMib: 64n, secretEnv: { K: "v2" } } }],
        })
      ).instances[0],
    );
    for (;;) {
      const ev = (await events.next()).value as { type: EventType; instance?: (typeof seen)[number] } | undefined;
      if (ev?.type === EventType.SYNCED || ev === undefined) break;
      seen.push(ev.instance);
    }
    // Running: the agent has read the assignment, and the driver holds the value.
    for (let i = 0; i < 400; i++) {
      const got = (await connect.getInstance({ name: "db-1" })).instance;
      if (got?.status?.phase === Phase.RUNNING) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    seen.push((await connect.stopInstance({ name: "db-1" })).instance);
    watch.abort();
    for (const i of seen) {
      assert.ok(i);
      const secret = i.spec?.secretEnv ?? {};
      assert.ok(Object.keys(secret).length === 1, JSON.stringify(secret));
      for (const v of Object.values(secret)) assert.equal(v, REDACTED);
    }
    assert.deepEqual(seen[0]?.spec?.env, { MODE: "prod" });
    // The store keeps the value (for the node), and the mock driver was given one environment.
    const stored = fromBinary(InstanceSchema, (await store.get(keys.instance("default/db-1")))!.value);
    assert.deepEqual(stored.spec?.secretEnv, { DB_PASSWORD: "hunter2" });
    const handle = JSON.parse(await readFile(join(dir, "n1", "mock", "db-1.json"), "utf8")) as { spec: { env: Record<string, string> } };
    assert.deepEqual(handle.spec.env, { MODE: "prod", DB_PASSWORD: "hunter2" });
  });

  it("refuses a variable named in both env and secret_env, or a bad name, and writes nothing", async () => {
    for (const [spec, re] of [
      [{ env: { A: "1" }, secretEnv: { A: "2" } }, /^spec\.secret_env\["A"\]: "A" is also in spec\.env/],
      [{ secretEnv: { "1X": "2" } }, /^spec\.secret_env\["1X"\]: "1X" is not an environment variable name/],
    ] as const) {
      const err = await clients[0]!
        .createInstance({ name: "bad-1", spec: { driver: "mock", vcpus: 1, memoryMib: 64n, ...spec } })
        .catch((e: unknown) => ConnectError.from(e));
      assert.ok(err instanceof ConnectError);
      assert.equal(err.code, Code.InvalidArgument);
      assert.match(err.rawMessage, re);
    }
    // The agent and controllers write beside the test, so look at the key rather than the revision.
    assert.equal(await store.get(keys.instance("default/bad-1")), undefined);
  });
});
