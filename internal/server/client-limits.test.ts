import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createContextValues, createHandlerContext, type HandlerContext } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { ConsoleKind, ConsoleService } from "../../api/gen/hypervisor/v1/console_pb.js";
import {
  EventType,
  InstanceService,
  WatchInstancesRequestSchema,
  type WatchInstancesResponse,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { clientAddress, ClientLimits } from "./client-limits.js";
import { instanceService } from "./instance-service.js";
import { Server } from "./server.js";

const hctxFor = (client: string, signal = new AbortController().signal): HandlerContext =>
  createHandlerContext({
    service: InstanceService,
    method: InstanceService.method.watchInstances,
    protocolName: "test",
    requestMethod: "POST",
    url: "http://test/",
    requestSignal: signal,
    contextValues: createContextValues().set(clientAddress, client),
  });

const nextType = async (it: AsyncIterator<WatchInstancesResponse>) => ((await it.next()).value as WatchInstancesResponse | undefined)?.type;

const codeOf = (e: unknown) => (e instanceof ConnectError ? e.code : undefined);

describe("client limits", () => {
  it("counts open streams per client and kind, and releases once", () => {
    const limits = new ClientLimits({ maxWatches: 2, maxLogFollows: 1 });
    const a = hctxFor("10.0.0.1");
    const b = hctxFor("10.0.0.2");
    const r1 = limits.hold(a, "watch");
    limits.hold(a, "watch");
    assert.throws(
      () => limits.hold(a, "watch"),
      (e: unknown) => codeOf(e) === Code.ResourceExhausted && /client 10\.0\.0\.1 has 2 watches/.test(String(e)),
    );
    limits.hold(b, "watch");
    limits.hold(a, "logs");
    assert.throws(
      () => limits.hold(a, "logs"),
      (e: unknown) => codeOf(e) === Code.ResourceExhausted,
    );
    r1();
    r1();
    assert.equal(limits.held("watch"), 2);
    limits.hold(a, "watch");
    assert.throws(() => limits.hold(a, "watch"));
  });

  it("gives each client a burst of console tickets, then a steady rate", () => {
    let now = 0;
    const limits = new ClientLimits({ ticketBurst: 3, ticketsPerMinute: 6 }, () => now);
    const a = hctxFor("10.0.0.1");
    for (let i = 0; i < 3; i++) limits.takeTicket(a);
    assert.throws(
      () => limits.takeTicket(a),
      (e: unknown) => codeOf(e) === Code.ResourceExhausted && /try again in 10 s/.test(String(e)),
    );
    limits.takeTicket(hctxFor("10.0.0.2"));
    now += 10_000; // one more after 60/6 seconds
    limits.takeTicket(a);
    assert.throws(() => limits.takeTicket(a));
  });
});

describe("client limits in the server", () => {
  let dir: string;
  let store: Store;
  let server: Server;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-limits-"));
    store = await openEmbeddedStore(join(dir, "store"));
    server = new Server({
      store,
      host: "127.0.0.1",
      port: 0,
      version: "test",
      access: "none",
      // The API alone: what is tested is what a client may hold, not what controllers do.
      controllers: false,
      clientLimits: { maxWatches: 2, ticketBurst: 2, ticketsPerMinute: 1, watchBacklog: 5 },
    });
    await server.start();
  });

  after(async () => {
    await server.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("refuses a client's watch beyond max-watches-per-client, over any protocol, until one closes", async () => {
    const clients = [
      createClient(InstanceService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" })),
      createClient(InstanceService, createGrpcTransport({ baseUrl: server.url })),
    ];
    const aborts = [new AbortController(), new AbortController()];
    const streams = clients.map((c, i) => c.watchInstances({}, { signal: aborts[i]!.signal })[Symbol.asyncIterator]());
    for (const s of streams) assert.equal(await nextType(s), EventType.SYNCED);
    const third = await clients[0]!
      .watchInstances({})
      [Symbol.asyncIterator]()
      .next()
      .catch((e: unknown) => e);
    assert.equal(codeOf(third), Code.ResourceExhausted, String(third));
    aborts[0]!.abort();
    for (let i = 0; i < 200 && server.ctx.clientLimits.held("watch") > 1; i++) await new Promise((r) => setTimeout(r, 25));
    const again = new AbortController();
    const s = clients[1]!.watchInstances({}, { signal: again.signal })[Symbol.asyncIterator]();
    assert.equal(await nextType(s), EventType.SYNCED);
    again.abort();
    aborts[1]!.abort();
  });

  it("ends a watch that falls more than watch-backlog messages behind, with ResourceExhausted, and frees its slot", async () => {
    const impl = instanceService(server.ctx);
    const abort = new AbortController();
    const watch = impl.watchInstances(
      create(WatchInstancesRequestSchema),
      hctxFor("10.9.9.9", abort.signal),
    ) as AsyncGenerator<WatchInstancesResponse>;
    assert.equal(await nextType(watch), EventType.SYNCED);
    // The watcher reads nothing more while instances change.
    const client = createClient(InstanceService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    for (let i = 0; i < 8; i++) await client.createInstance({ name: `lag-${i}`, spec: { driver: "mock", vcpus: 1, memoryMib: 16n } });
    for (let i = 0; i < 200 && server.ctx.informers.instances.items.size < 8; i++) await new Promise((r) => setTimeout(r, 25));
    const err = await watch.next().catch((e: unknown) => e);
    assert.equal(codeOf(err), Code.ResourceExhausted, String(err));
    assert.match(String(err), /fell \d+ messages behind \(at most 5\)/);
    assert.equal(server.ctx.clientLimits.held("watch"), 0);
  });

  it("rate-limits console tickets per client, before looking the instance up", async () => {
    const consoles = createClient(ConsoleService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const ask = () => consoles.createConsoleTicket({ name: "nope", kind: ConsoleKind.VNC }).catch((e: unknown) => codeOf(e));
    assert.deepEqual([await ask(), await ask(), await ask()], [Code.NotFound, Code.NotFound, Code.ResourceExhausted]);
  });
});
