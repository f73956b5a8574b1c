// A watch that ended resumes from the last revision it received: only what changed is sent.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { EventType, InstanceService, type WatchInstancesResponse } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { Server } from "./server.js";

describe("watch resume", () => {
  let dir: string;
  let store: Store;
  let server: Server;
  let client: Client<typeof InstanceService>;
  const spec = { driver: "mock", vcpus: 1, memoryMib: 16n };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-resume-"));
    store = await openEmbeddedStore(join(dir, "store"));
    server = new Server({ store, host: "127.0.0.1", port: 0, version: "test", access: "none", controllers: false });
    await server.start();
    client = createClient(InstanceService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
  });

  after(async () => {
    await server.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** The events up to and including SYNCED. */
  async function untilSynced(resumeRevision = 0n): Promise<WatchInstancesResponse[]> {
    const abort = new AbortController();
    const got: WatchInstancesResponse[] = [];
    for await (const ev of client.watchInstances({ resumeRevision }, { signal: abort.signal })) {
      got.push(ev);
      if (ev.type === EventType.SYNCED) break;
    }
    abort.abort();
    return got;
  }

  it("sends only what changed after the revision: modified, added and deleted, then SYNCED", async () => {
    for (const name of ["a", "b", "c"]) await client.createInstance({ name, spec });
    const first = await untilSynced();
    assert.deepEqual(
      first.map((e) => [EventType[e.type], e.instance?.name ?? ""]),
      [["ADDED", "a"], ["ADDED", "b"], ["ADDED", "c"], ["SYNCED", ""]], // prettier-ignore
    );
    const last = first.at(-1)!.revision;
    assert.ok(last > 0n, "SYNCED carries the revision to resume from");
    assert.ok(first.every((e) => e.revision === last));

    // Meanwhile: c changes, d is created, b's record goes (as the garbage collector removes it).
    await client.stopInstance({ name: "c" });
    await client.createInstance({ name: "d", spec });
    await store.delete(keys.instance("default/b"));
    for (let i = 0; i < 200 && server.ctx.informers.instances.get(keys.instance("default/b")); i++)
      await new Promise((r) => setTimeout(r, 10));

    const resumed = await untilSynced(last);
    assert.deepEqual(
      resumed.map((e) => [EventType[e.type], e.instance?.name ?? ""]),
      [["MODIFIED", "c"], ["MODIFIED", "d"], ["DELETED", "b"], ["SYNCED", ""]], // prettier-ignore
    );
    assert.ok(resumed.at(-1)!.revision > last);
    // Resuming from where that left off: nothing to tell.
    assert.deepEqual(
      (await untilSynced(resumed.at(-1)!.revision)).map((e) => EventType[e.type]),
      ["SYNCED"],
    );
  });

  it("refuses a revision outside its history as OUT_OF_RANGE, and a negative one as INVALID_ARGUMENT", async () => {
    const code = async (rev: bigint) => {
      try {
        await untilSynced(rev);
        return undefined;
      } catch (e) {
        return ConnectError.from(e).code;
      }
    };
    assert.equal(await code(1n), Code.OutOfRange, "older than the server's history");
    assert.equal(await code(10n ** 12n), Code.OutOfRange, "newer than the server's state");
    assert.equal(await code(-5n), Code.InvalidArgument);
  });
});
