// Connection bounds, against the real hypervisor-server binary (embedded store) in its own
// process, on TLS as production runs it: a client that freezes the server's event loop must not
// also freeze the test. The protocol router sniffs the first bytes after the handshake (the same
// code then routes --no-tls connections, so no cleartext server is needed to test it): HTTP/2
// preface fragments, half-sent HTTP/1.1 headers and idle sessions are sent inside TLS, and a TCP
// client that never finishes (or never starts) its handshake, the threat before any HTTP, is
// bound by the same header-timeout.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as https from "node:https";
import * as net from "node:net";
import * as tls from "node:tls";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { adminHeaders } from "../../test/support/cluster.js";
import { binPath, freePort, Proc } from "../../test/support/procs.js";

/** The start of a TLS ClientHello record (handshake, TLS 1.0 record version, a length): no more. */
const PARTIAL_CLIENT_HELLO = "\x16\x03\x01\x02\x00\x01";

/** A raw TCP client that sends `bytes` (latin1) and then nothing: no TLS handshake, or part of one. */
async function tcpClient(port: number, bytes: string): Promise<net.Socket> {
  const s = net.connect(port, "127.0.0.1");
  await new Promise<void>((resolve, reject) => {
    s.once("connect", resolve);
    s.once("error", reject);
  });
  s.on("error", () => undefined);
  if (bytes) s.write(Buffer.from(bytes, "latin1"));
  return s;
}

/** A TLS client that completes the handshake, sends `bytes` and then nothing. */
async function rawClient(port: number, ca: string, bytes: string): Promise<tls.TLSSocket> {
  const s = tls.connect({ port, host: "127.0.0.1", ca });
  await new Promise<void>((resolve, reject) => {
    s.once("secureConnect", resolve);
    s.once("error", reject);
  });
  s.on("error", () => undefined);
  if (bytes) s.write(bytes);
  return s;
}

/** Resolves when the server has closed the socket (with what it sent before closing). */
function closedByServer(s: net.Socket): Promise<string> {
  let got = "";
  s.on("data", (b: Buffer) => (got += b.toString()));
  return new Promise((resolve) => (s.destroyed ? resolve(got) : s.once("close", () => resolve(got))));
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/**
 * One HTTPS/1.1 request on a connection of its own, trusting `ca`, bounded in time. The certificate
 * is checked against the address dialled (servername ""), not against the Host header under test.
 */
function request(port: number, ca: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Answer> {
  return new Promise<Answer>((resolve, reject) => {
    const req = https.request(
      {
        host: "127.0.0.1",
        servername: "",
        port,
        ca,
        agent: false,
        path,
        method: body === undefined ? "GET" : "POST",
        headers,
        timeout: 15_000,
      },
      (res) => {
        let text = "";
        res.on("data", (b: Buffer) => (text += b.toString()));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${path}: no answer within 15 s`)));
    req.on("error", reject);
    req.end(body);
  });
}

describe("connections: nothing a client sends can hold the server", () => {
  let dir: string;
  let server: Proc;
  let port: number;
  let url: string;
  /** The cluster CA the server made in its pki dir: what every client here trusts. */
  let ca: string;
  /** The bootstrap admin's Authorization header: the API calls here are refused for where they come from, not for who. */
  let admin: { authorization: string };

  /** GET /healthz with a bound: a frozen server fails it instead of hanging the test. */
  const healthy = async (): Promise<boolean> => {
    const res = await request(port, ca, "/healthz");
    return res.status === 200 && res.body.startsWith("ok");
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-http-"));
    port = await freePort();
    url = `https://127.0.0.1:${port}`;
    server = new Proc("server", [
      binPath("hypervisor-server"),
      "--store=embedded",
      `--data-dir=${dir}`,
      `--listen=127.0.0.1:${port}`,
      // Short bounds so the test sees them act; the defaults are nginx's (configs/server.yaml).
      "--header-timeout=2",
      "--idle-timeout=3",
      "--max-concurrent-streams=7",
      "--shutdown-timeout=10",
      "--allowed-origins=https://portal.example",
      "--desktop-frame-ancestors=https://portal.example",
    ]);
    await server.waitFor(/server running/);
    ca = await readFile(join(dir, "pki", "ca.crt"), "utf8");
    admin = adminHeaders(join(dir, "pki", "ca.crt"));
  });

  after(async () => {
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  });

  for (const fragment of ["P", "PR", "PRI", "PRI * HTTP/2.0\r\n"])
    it(`answers while a client holds a connection after sending ${JSON.stringify(fragment)}, and after it leaves`, async () => {
      const s = await rawClient(port, ca, fragment);
      assert.equal(await healthy(), true);
      assert.equal(await healthy(), true);
      s.destroy();
      assert.equal(await healthy(), true);
    });

  it("answers while clients hold connections in the middle of their TLS handshake, and after they leave", async () => {
    const held = await Promise.all([tcpClient(port, ""), tcpClient(port, PARTIAL_CLIENT_HELLO)]);
    assert.equal(await healthy(), true);
    assert.equal(await healthy(), true);
    for (const s of held) s.destroy();
    assert.equal(await healthy(), true);
  });

  it("closes a connection that sends nothing, a partial handshake, or a partial preface, within header-timeout", async () => {
    const silent = await tcpClient(port, "");
    const handshake = await tcpClient(port, PARTIAL_CLIENT_HELLO);
    const silentTls = await rawClient(port, ca, "");
    const partial = await rawClient(port, ca, "PRI * HT");
    await Promise.all([closedByServer(silent), closedByServer(handshake), closedByServer(silentTls), closedByServer(partial)]);
    assert.equal(silent.destroyed && handshake.destroyed && silentTls.destroyed && partial.destroyed, true);
    assert.equal(await healthy(), true);
  });

  it("closes a connection whose HTTP/1.1 headers stop half-way, with 408", async () => {
    const s = await rawClient(port, ca, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
    const got = await closedByServer(s);
    assert.match(got, /^HTTP\/1\.1 408 /);
  });

  it("closes an idle HTTP/1.1 keep-alive connection after idle-timeout", async () => {
    const s = await rawClient(port, ca, `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    const got = await closedByServer(s);
    assert.match(got, /^HTTP\/1\.1 200 /);
  });

  it("advertises max-concurrent-streams and closes an HTTP/2 session with no stream after idle-timeout", async () => {
    const session = http2.connect(url, { ca });
    session.on("error", () => undefined);
    const settings = await new Promise<http2.Settings>((resolve) => session.once("remoteSettings", resolve));
    assert.equal(settings.maxConcurrentStreams, 7);
    // One request, then nothing: the session must be closed by the server (GOAWAY), not by us.
    const req = session.request({ ":path": "/healthz" });
    req.resume();
    await new Promise((resolve) => req.once("close", resolve));
    await new Promise<void>((resolve) => session.once("close", () => resolve()));
    assert.equal(session.closed || session.destroyed, true);
  });

  it("refuses a foreign Host (DNS rebinding) in every protocol, and serves IP literals and localhost", async () => {
    const get = (path: string, headers: Record<string, string>, body?: string) => request(port, ca, path, headers, body);
    const rpc = "/hypervisor.v1.ClusterService/GetVersion";
    const json = { "content-type": "application/json", ...admin };
    const page = await get("/", { host: "rebind.example:7070" });
    assert.equal(page.status, 403);
    assert.match(page.body, /host "rebind\.example" is not in the server's allowed-hosts/);
    const connect = await get(rpc, { ...json, host: "rebind.example" }, "{}");
    assert.equal(connect.status, 403);
    assert.equal((JSON.parse(connect.body) as { code: string }).code, "permission_denied");
    const grpcWeb = await get(rpc, { "content-type": "application/grpc-web+proto", ...admin, host: "rebind.example" }, "");
    assert.equal(grpcWeb.headers["grpc-status"], "7");
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, "192.0.2.7"]) {
      const ok = await get(rpc, { ...json, host }, "{}");
      assert.equal(ok.status, 200, `${host}: ${ok.body}`);
    }
    // gRPC over HTTP/2 names the host in :authority.
    const session = http2.connect(url, { ca });
    session.on("error", () => undefined);
    const stream = session.request({
      ":method": "POST",
      ":path": rpc,
      ":authority": "rebind.example",
      "content-type": "application/grpc",
      ...admin,
    });
    const head = await new Promise<http2.IncomingHttpHeaders>((resolve) => stream.once("response", resolve));
    stream.end();
    session.close();
    assert.equal(head["grpc-status"], "7");
  });

  it("refuses cross-site Origins on the API and the console WebSocket, and accepts its own and allowed-origins", async () => {
    const call = (origin: string) =>
      request(port, ca, "/hypervisor.v1.ClusterService/GetVersion", { "content-type": "application/json", ...admin, origin }, "{}");
    assert.equal((await call("http://evil.example")).status, 403);
    assert.equal((await call(`https://127.0.0.1:${port + 1}`)).status, 403);
    assert.equal((await call("null")).status, 403);
    assert.equal((await call(url)).status, 200);
    assert.equal((await call("https://portal.example")).status, 200);
    const upgrade = (origin: string) =>
      new Promise<string>((resolve, reject) => {
        const s = tls.connect({ port, host: "127.0.0.1", ca }, () =>
          s.write(
            `GET /console/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nOrigin: ${origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
          ),
        );
        let got = "";
        s.on("data", (b: Buffer) => (got += b.toString()));
        s.on("close", () => resolve(got));
        s.on("error", reject);
      });
    const evil = await upgrade("http://evil.example");
    assert.match(evil, /^HTTP\/1\.1 403 [^]*origin "http:\/\/evil\.example" is not this server's/);
    // Its own origin passes the check and reaches the ticket check (this ticket does not exist).
    assert.match(await upgrade(url), /^HTTP\/1\.1 403 [^]*console ticket unknown/);
  });

  it("sends nosniff, no-referrer and a CSP forbidding frames, except the desktop page's named framers", async () => {
    const app = await request(port, ca, "/");
    assert.equal(app.headers["x-content-type-options"], "nosniff");
    assert.equal(app.headers["referrer-policy"], "no-referrer");
    assert.match(String(app.headers["content-security-policy"] ?? ""), /frame-ancestors 'none'/);
    assert.match(String(app.headers["content-security-policy"] ?? ""), /script-src 'self'(;|$)/);
    const desktop = await request(port, ca, "/desktop/");
    assert.match(String(desktop.headers["content-security-policy"] ?? ""), /frame-ancestors https:\/\/portal\.example(;|$)/);
    assert.equal(desktop.headers["x-frame-options"], undefined);
  });

  it("stops on SIGTERM within shutdown-timeout, whatever its clients hold", async () => {
    const held: net.Socket[] = [
      await rawClient(port, ca, "PRI"),
      await rawClient(port, ca, "GET / HTTP/1.1\r\n"),
      await tcpClient(port, PARTIAL_CLIENT_HELLO),
    ];
    const watch = http2.connect(url, { ca });
    watch.on("error", () => undefined);
    const stream = watch.request({
      ":method": "POST",
      ":path": "/hypervisor.v1.InstanceService/WatchInstances",
      "content-type": "application/connect+json",
      ...admin,
    });
    stream.on("error", () => undefined);
    stream.end(Buffer.from([0, 0, 0, 0, 2, 0x7b, 0x7d]));
    await new Promise((resolve, reject) => {
      stream.once("response", resolve);
      setTimeout(() => reject(new Error("the watch did not answer")), 30_000).unref();
    });
    // Its first frame is a message (SYNCED), not the end of the stream: the watch is open and held.
    const first = await new Promise<Buffer>((resolve, reject) => {
      stream.once("data", resolve);
      setTimeout(() => reject(new Error("the watch sent nothing")), 30_000).unref();
    });
    assert.equal(first[0], 0, first.toString());
    // Proc.stop sends SIGKILL after its grace, which would make the exit code null.
    const code = await server.stop(60_000);
    assert.equal(code, 0, server.tail());
    for (const s of held) s.destroy();
    watch.destroy();
  });
});
