// AgentService through the real protocol: the agent's endpoint (gRPC over HTTP/2 on loopback)
// serving agentService over a source of temp files and a unix-socket VNC stand-in, called by the
// server's AgentClient, which finds it through the store as it does in the server. The agent's
// lookups (is it assigned here) are stubbed; test/e2e covers them with real drivers.
import assert from "node:assert/strict";
import { appendFile, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server as NetServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AgentService, AgentServiceImportImageRequestSchema } from "../../api/gen/hypervisor/v1/agent_pb.js";
import { ConsoleKind } from "../../api/gen/hypervisor/v1/console_pb.js";
import { AgentEndpointSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { logger } from "../../pkg/log/index.js";
import { agentService, type AgentServiceSource } from "../agent/agent-service.js";
import { AgentEndpoint } from "../agent/endpoint.js";
import { AgentClient } from "./agent-client.js";

const NODE = "n1";
const MAX_IMAGE = 64 * 1024;

async function until(what: string, probe: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 800; i++) {
    if (await probe()) return;
    await sleep(25);
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** The code and message of a rejection. */
async function refusal(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    return ConnectError.from(e);
  }
  assert.fail("expected a refusal");
}

async function drain(it: AsyncIterable<Uint8Array>): Promise<string> {
  let s = "";
  for await (const b of it) s += Buffer.from(b).toString();
  return s;
}

describe("AgentService through the agent's endpoint and the server's client", () => {
  let dir: string;
  let store: Store;
  let endpoint: AgentEndpoint;
  let agents: AgentClient;
  let vnc: NetServer;
  let url: string;
  const vncSockets: Socket[] = [];
  const imported: { driver: string; bytes: Buffer }[] = [];
  const purged: string[] = [];
  const logPath = () => join(dir, "logs", "web-1.log");

  const source: AgentServiceSource = {
    async logFile(name) {
      if (name !== "web-1") throw new ConnectError(`instance ${name} is not assigned to node ${NODE}`, Code.NotFound);
      return logPath();
    },
    async importImage(driver, file) {
      if (driver !== "containerd") throw new ConnectError(`driver ${driver} keeps no images`, Code.FailedPrecondition);
      const bytes = await readFile(file);
      imported.push({ driver, bytes });
      return [{ name: "img:1", digest: "sha256:00", sizeBytes: bytes.length, driver }];
    },
    async listImages() {
      return [{ name: "img:1", digest: "sha256:00", sizeBytes: 3, driver: "containerd", createdAt: 1_700_000_000_000 }];
    },
    async console(name, kind) {
      if (name !== "web-1") throw new ConnectError(`instance ${name} is not assigned to node ${NODE}`, Code.NotFound);
      if (kind !== "vnc") throw new ConnectError("driver mock has no serial console", Code.FailedPrecondition);
      return { kind: "vnc", socket: join(dir, "vnc.sock") };
    },
    async purgeOrphan(name, uid) {
      if (name === "assigned-1")
        throw new ConnectError(`instance ${name} is assigned to node ${NODE}; delete the instance instead`, Code.FailedPrecondition);
      if (name !== "orphan-1") throw new ConnectError(`no orphan ${name} on node ${NODE}`, Code.NotFound);
      purged.push(`${name}/${uid}`);
    },
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-agent-service-"));
    store = await openEmbeddedStore(join(dir, "store"));
    // A VNC server stand-in: greets like RFB, then answers each chunk upper-cased.
    vnc = createServer((s) => {
      vncSockets.push(s);
      s.on("error", () => undefined);
      s.write("RFB 003.008\n");
      s.on("data", (b) => s.write(b.toString().toUpperCase()));
    });
    await new Promise<void>((resolve) => vnc.listen(join(dir, "vnc.sock"), resolve));
    const log = logger("agent-service-test");
    endpoint = new AgentEndpoint(
      agentService(source, {
        nodeName: NODE,
        log,
        spoolDir: join(dir, "spool"),
        maxImageBytes: MAX_IMAGE,
        streamIdleMs: 500,
        followPollMs: 20,
      }),
      log,
    );
    const port = await endpoint.listen("127.0.0.1", 0);
    url = `http://127.0.0.1:${port}`;
    await store.put(keys.endpoint(NODE), toBinary(AgentEndpointSchema, create(AgentEndpointSchema, { url, token: endpoint.token })));
    agents = new AgentClient(store);
  });

  after(async () => {
    agents.close();
    await endpoint.close();
    await new Promise((resolve) => vnc.close(resolve));
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const signal = () => AbortSignal.timeout(20_000);

  it("refuses a call without the token, or with another, as Unauthenticated", async () => {
    const bare = createClient(AgentService, createGrpcTransport({ baseUrl: url }));
    assert.equal((await refusal(bare.listImages({}))).code, Code.Unauthenticated);
    const wrong = await refusal(bare.purgeOrphan({ name: "orphan-1" }, { headers: { authorization: "Bearer nope" } }));
    assert.equal(wrong.code, Code.Unauthenticated);
    assert.deepEqual(purged, [], "nothing was purged");
  });

  it("streams a log's last bytes, then follows what is appended until the log is deleted", async () => {
    await rm(join(dir, "logs"), { recursive: true, force: true });
    await import("node:fs/promises").then((fs) => fs.mkdir(join(dir, "logs")));
    await writeFile(logPath(), "line one\nline two\n");
    assert.equal(await drain(agents.logs(NODE, "web-1", false, 9n, signal())), "line two\n");
    assert.equal(await drain(agents.logs(NODE, "web-1", false, 0n, signal())), "line one\nline two\n");

    let got = "";
    const follow = (async () => {
      for await (const b of agents.logs(NODE, "web-1", true, 9n, signal())) got += Buffer.from(b).toString();
    })();
    await until("the tail", () => got === "line two\n");
    await appendFile(logPath(), "line three\n");
    await until("the appended line", () => got === "line two\nline three\n");
    await rm(logPath());
    await follow; // ends by itself once the log is gone
    assert.equal(got, "line two\nline three\n");
  });

  it("refuses a log of a bad name or an instance not here, naming it, with the agent's code", async () => {
    const bad = await refusal(drain(agents.logs(NODE, "Web_1", false, 0n, signal())));
    assert.equal(bad.code, Code.InvalidArgument);
    assert.match(bad.rawMessage, /^agent of node n1: name: "Web_1" is not a valid name/);
    const absent = await refusal(drain(agents.logs(NODE, "db-1", false, 0n, signal())));
    assert.equal(absent.code, Code.NotFound);
    assert.match(absent.rawMessage, /instance db-1 is not assigned to node n1/);
    const big = await refusal(drain(agents.logs(NODE, "web-1", false, 2n ** 40n, signal())));
    assert.equal(big.code, Code.InvalidArgument);
    assert.match(big.rawMessage, /tail_bytes: 1099511627776 is more than the maximum/);
  });

  it("imports an uploaded tarball with the named driver, byte for byte, and keeps no spool", async () => {
    imported.length = 0;
    const parts = [Buffer.alloc(3000, 1), Buffer.alloc(5000, 2), Buffer.alloc(1, 3)];
    const images = await agents.importImage(
      NODE,
      "containerd",
      (async function* () {
        yield* parts;
      })(),
      signal(),
    );
    assert.equal(images.length, 1);
    assert.equal(images[0]?.node, NODE);
    assert.equal(images[0]?.sizeBytes, 8001n);
    assert.equal(imported.length, 1);
    assert.ok(imported[0]!.bytes.equals(Buffer.concat(parts)));
    assert.deepEqual(await readdir(join(dir, "spool")), []);
  });

  it("refuses an upload over the agent's limit with ResourceExhausted, imports nothing and keeps no spool", async () => {
    imported.length = 0;
    const err = await refusal(
      agents.importImage(
        NODE,
        "containerd",
        (async function* () {
          for (let i = 0; i < 20; i++) yield Buffer.alloc(8192, 7);
        })(),
        signal(),
      ),
    );
    assert.equal(err.code, Code.ResourceExhausted);
    assert.match(err.rawMessage, /over the agent's limit of 65536 bytes/);
    assert.equal(imported.length, 0);
    assert.deepEqual(await readdir(join(dir, "spool")), []);
  });

  it("refuses a bad driver, an empty tarball, a stream without its header, a header twice, and a silent stream", async () => {
    imported.length = 0;
    const one = (async function* () {
      yield Buffer.from("x");
    })();
    const bad = await refusal(agents.importImage(NODE, "Docker!", one, signal()));
    assert.equal(bad.code, Code.InvalidArgument);
    assert.match(bad.rawMessage, /header.driver: "Docker!" is not a driver/);
    const keepsNone = await refusal(
      agents.importImage(
        NODE,
        "mock",
        (async function* () {
          yield Buffer.from("x");
        })(),
        signal(),
      ),
    );
    assert.equal(keepsNone.code, Code.FailedPrecondition);
    const empty = await refusal(agents.importImage(NODE, "containerd", (async function* () {})(), signal()));
    assert.equal(empty.code, Code.InvalidArgument);
    assert.match(empty.rawMessage, /the image tarball is empty/);

    const raw = createClient(AgentService, createGrpcTransport({ baseUrl: url }));
    const headers = { authorization: `Bearer ${endpoint.token}` };
    const msg = (part: Parameters<typeof create<typeof AgentServiceImportImageRequestSchema>>[1]) =>
      create(AgentServiceImportImageRequestSchema, part);
    const headless = await refusal(
      raw.importImage(
        (async function* () {
          yield msg({ part: { case: "chunk", value: Buffer.from("x") } });
        })(),
        { headers },
      ),
    );
    assert.equal(headless.code, Code.InvalidArgument);
    assert.match(headless.rawMessage, /header: the first message must name the driver/);
    const twice = await refusal(
      raw.importImage(
        (async function* () {
          yield msg({ part: { case: "header", value: { driver: "containerd" } } });
          yield msg({ part: { case: "header", value: { driver: "containerd" } } });
        })(),
        { headers },
      ),
    );
    assert.equal(twice.code, Code.InvalidArgument);
    assert.match(twice.rawMessage, /header: sent twice/);
    // Opened and left silent: the agent ends it (streamIdleMs here) rather than hold it forever.
    const silent = await refusal(
      raw.importImage(
        (async function* () {
          yield msg({ part: { case: "header", value: { driver: "containerd" } } });
          await sleep(5_000);
        })(),
        { headers, signal: signal() },
      ),
    );
    assert.equal(silent.code, Code.DeadlineExceeded);
    assert.match(silent.rawMessage, /chunk: nothing came for 500 ms/);
    assert.equal(imported.length, 0);
    assert.deepEqual(await readdir(join(dir, "spool")), []);
  });

  it("purges an orphan, and passes on the agent's NotFound, FailedPrecondition and InvalidArgument", async () => {
    purged.length = 0;
    await agents.purgeOrphan(NODE, "orphan-1", "u-1", signal());
    assert.deepEqual(purged, ["orphan-1/u-1"]);
    const absent = await refusal(agents.purgeOrphan(NODE, "ghost-1", "", signal()));
    assert.equal(absent.code, Code.NotFound);
    const assigned = await refusal(agents.purgeOrphan(NODE, "assigned-1", "", signal()));
    assert.equal(assigned.code, Code.FailedPrecondition);
    assert.match(assigned.rawMessage, /^agent of node n1: instance assigned-1 is assigned to node n1/);
    const bad = await refusal(agents.purgeOrphan(NODE, "default/../etc", "", signal()));
    assert.equal(bad.code, Code.InvalidArgument);
    assert.match(bad.rawMessage, /name: "..\/etc" is not a valid name/);
    assert.deepEqual(purged, ["orphan-1/u-1"]);
  });

  it("is Unavailable, naming the node, when its agent publishes no endpoint", async () => {
    const err = await refusal(agents.purgeOrphan("n2", "orphan-1", "", signal()));
    assert.equal(err.code, Code.Unavailable);
    assert.match(err.rawMessage, /the agent of node n2 publishes no endpoint/);
  });

  it("lists images with the node set", async () => {
    const images = await agents.listImages(NODE, signal());
    assert.equal(images.length, 1);
    assert.equal(images[0]?.node, NODE);
    assert.equal(images[0]?.createTime?.seconds, 1_700_000_000n);
  });

  it("tunnels console bytes both ways, and closing the tunnel closes the console's connection", async () => {
    vncSockets.length = 0;
    const tunnel = await agents.console(NODE, "web-1", ConsoleKind.VNC, signal());
    const reader = tunnel.read[Symbol.asyncIterator]();
    let got = "";
    const read = async (want: string) => {
      while (!got.includes(want)) {
        const r = await reader.next();
        if (r.done) assert.fail(`the tunnel ended before ${JSON.stringify(want)}`);
        got += Buffer.from(r.value).toString();
      }
    };
    await read("RFB 003.008\n");
    assert.equal(await tunnel.write(Buffer.from("key press")), true);
    await read("KEY PRESS");
    assert.equal(vncSockets.length, 1);
    const conn = vncSockets[0]!;
    tunnel.close();
    await until("the console's connection closed", () => conn.destroyed || conn.readableEnded);
    assert.equal(await tunnel.write(Buffer.from("late")), false, "a closed tunnel takes nothing");
  });

  it("ends the tunnel when the console closes its side", async () => {
    vncSockets.length = 0;
    const tunnel = await agents.console(NODE, "web-1", ConsoleKind.VNC, signal());
    const all = drain(tunnel.read);
    await until("the console connected", () => vncSockets.length === 1);
    vncSockets[0]!.end();
    assert.equal(await all, "RFB 003.008\n");
  });

  it("refuses a console before opening anything: not here, no such kind, a bad name", async () => {
    vncSockets.length = 0;
    const absent = await refusal(agents.console(NODE, "db-1", ConsoleKind.VNC, signal()));
    assert.equal(absent.code, Code.NotFound);
    const serial = await refusal(agents.console(NODE, "web-1", ConsoleKind.SERIAL, signal()));
    assert.equal(serial.code, Code.FailedPrecondition);
    const kind = await refusal(agents.console(NODE, "web-1", ConsoleKind.UNSPECIFIED, signal()));
    assert.equal(kind.code, Code.InvalidArgument);
    assert.match(kind.rawMessage, /open.kind: "UNSPECIFIED" must be CONSOLE_KIND_VNC or CONSOLE_KIND_SERIAL/);
    const bad = await refusal(agents.console(NODE, "-x", ConsoleKind.VNC, signal()));
    assert.equal(bad.code, Code.InvalidArgument);
    assert.match(bad.rawMessage, /open.name: "-x" is not a valid name/);
    assert.equal(vncSockets.length, 0, "no connection to a console was made");
  });

  it("names a VM's VNC socket for a server on the same machine", async () => {
    assert.deepEqual(await agents.consoleAddress(NODE, "web-1", signal()), { path: join(dir, "vnc.sock") });
    assert.equal((await refusal(agents.consoleAddress(NODE, "db-1", signal()))).code, Code.NotFound);
  });
});
