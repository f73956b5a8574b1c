// ctl against real HTTPS servers (node's http2 secure server, HTTP/1.1 allowed, serving a Connect
// router of the project's API) with throwaway CAs made by openssl: the right CA works, another CA
// or none fails with a message saying why, the client certificate and the token are presented
// when configured, over HTTP/1.1 (unary calls) and HTTP/2 (the image service).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createSecureServer, type Http2SecureServer } from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import type { TLSSocket } from "node:tls";
import { createContextKey, createContextValues } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { createServer as createHttpsServer } from "node:https";
import { PassThrough } from "node:stream";
import { WebSocketServer } from "ws";
import { ClusterService } from "../../api/gen/hypervisor/v1/cluster_pb.js";
import { ConsoleService } from "../../api/gen/hypervisor/v1/console_pb.js";
import { ImageService } from "../../api/gen/hypervisor/v1/image_pb.js";
import { newCa, type Issued, type TestCa } from "../../test/support/openssl-ca.js";
import { ExitCode } from "./errors.js";
import { run } from "./cli.js";
import { runCli } from "./testing.js";

interface Seen {
  httpVersion: string;
  peer: string;
  auth: string;
}

const seenKey = createContextKey<Seen>({ httpVersion: "", peer: "", auth: "" });

interface TlsServer {
  url: string;
  seen: Seen[];
  close(): Promise<void>;
}

/** An HTTPS server with `leaf` as its certificate; client certificates of `clientCa` are asked for, and required if `require`. */
async function serve(leaf: Issued, clientCa: TestCa, require: boolean): Promise<TlsServer> {
  const seen: Seen[] = [];
  const handler = connectNodeAdapter({
    routes: (router) => {
      // Each answer echoes what the server saw of the caller, so the test reads it from ctl's output.
      router.service(ClusterService, {
        getVersion: (_req, ctx) => {
          const s = ctx.values.get(seenKey);
          seen.push(s);
          return { version: `peer=${s.peer}`, apiVersion: "v1", store: `auth=${s.auth}`, nodeVersion: s.httpVersion };
        },
      });
      router.service(ImageService, {
        listImages: (_req, ctx) => {
          const s = ctx.values.get(seenKey);
          seen.push(s);
          return { images: [], unreachable: { peer: s.peer, http: s.httpVersion } };
        },
      });
    },
    contextValues: (req) => {
      const cert = (req.socket as TLSSocket).getPeerCertificate();
      const peer = cert && typeof cert.subject?.CN === "string" ? cert.subject.CN : "none";
      return createContextValues().set(seenKey, { httpVersion: req.httpVersion, peer, auth: req.headers.authorization ?? "none" });
    },
  });
  const server: Http2SecureServer = createSecureServer(
    { allowHTTP1: true, cert: leaf.certPem, key: leaf.keyPem, ca: clientCa.certPem, requestCert: true, rejectUnauthorized: require },
    handler,
  );
  // ctl's HTTP/2 sessions and keep-alive sockets may outlive its run; close() ends them.
  const sockets = new Set<TLSSocket>();
  server.on("secureConnection", (sock: TLSSocket) => {
    sockets.add(sock);
    sock.once("close", () => sockets.delete(sock));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `https://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}

let dir: string;
let caA: TestCa;
let caB: TestCa;
let client: Issued;
let clientOfB: Issued;
let optional: TlsServer;
let required: TlsServer;
let misnamed: TlsServer;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "ctl-tls-"));
  caA = await newCa(dir, "a");
  caB = await newCa(dir, "b");
  const srv = await caA.issue("server", { cn: "server:test", san: ["IP:127.0.0.1", "DNS:localhost"], eku: ["serverAuth"] });
  const other = await caA.issue("misnamed", { cn: "server:other", san: ["DNS:other.example"], eku: ["serverAuth"] });
  client = await caA.issue("client", { cn: "user:alice", eku: ["clientAuth"] });
  clientOfB = await caB.issue("client-b", { cn: "user:mallory", eku: ["clientAuth"] });
  optional = await serve(srv, caA, false);
  required = await serve(srv, caA, true);
  misnamed = await serve(other, caA, false);
});

/** Flags for `url` with CA a and alice's certificate, signed by it. */
const withClientCert = (url: string) => [
  "--server",
  url,
  "--ca-file",
  caA.certFile,
  "--client-cert",
  client.certFile,
  "--client-key",
  client.keyFile,
];

after(async () => {
  await Promise.all([optional?.close(), required?.close(), misnamed?.close()]);
  await rm(dir, { recursive: true, force: true });
});

describe("ctl over TLS", () => {
  it("verifies the server against --ca-file, over HTTP/1.1 and HTTP/2", async () => {
    const r = await runCli(["--server", optional.url, "--ca-file", caA.certFile, "version"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Server: peer=none \(API v1, store auth=none, node 1\.1\)$/m);
    assert.equal(r.stderr, "");
    const images = await runCli(["--server", optional.url, "--ca-file", caA.certFile, "image", "list"]);
    assert.equal(images.code, 0, images.stderr);
    assert.match(images.stdout, /node\/http: not asked: 2\.0/);
  });

  it("refuses a server whose certificate another CA signed, naming the CA in use", async () => {
    const r = await runCli(["--server", optional.url, "--ca-file", caB.certFile, "version"]);
    assert.equal(r.code, ExitCode.Unavailable);
    assert.equal(r.stdout, "");
    // The server sends its CA with its certificate (node builds the chain from its `ca`), hence the code.
    assert.equal(
      r.stderr,
      `error: cannot verify server at ${optional.url}: its certificate is not signed by the CA of --ca-file ${caB.certFile} (SELF_SIGNED_CERT_IN_CHAIN)\n`,
    );
    // The HTTP/2 transport verifies the same way.
    const images = await runCli(["--server", optional.url, "--ca-file", caB.certFile, "image", "list"]);
    assert.equal(images.code, ExitCode.Unavailable);
    assert.match(images.stderr, /its certificate is not signed by the CA of --ca-file/);
    assert.equal(
      optional.seen.filter((s) => s.peer === "none" && s.auth === "none").length,
      2,
      "only the two calls with the right CA arrived",
    );
  });

  it("without a CA uses the system store, which does not know the cluster's CA", async () => {
    const r = await runCli(["--server", optional.url, "version"]);
    assert.equal(r.code, ExitCode.Unavailable);
    assert.match(
      r.stderr,
      /^error: cannot verify server at https:\/\/127\.0\.0\.1:\d+: its certificate is not signed by a CA this system trusts; give the cluster's CA/,
    );
  });

  it("refuses a certificate that does not name the host", async () => {
    const r = await runCli(["--server", misnamed.url, "--ca-file", caA.certFile, "version"]);
    assert.equal(r.code, ExitCode.Unavailable);
    assert.match(r.stderr, /its certificate does not name 127\.0\.0\.1 \(ERR_TLS_CERT_ALTNAME_INVALID\)/);
  });

  it("presents the client certificate from flags, and a server that requires one refuses ctl without it", async () => {
    const flags = ["--server", required.url, "--ca-file", caA.certFile];
    const without = await runCli([...flags, "version"]);
    assert.equal(without.code, ExitCode.Unavailable);
    assert.match(without.stderr, /refused the TLS handshake: it requires a client certificate it accepts/);
    const withB = await runCli([...flags, "--client-cert", clientOfB.certFile, "--client-key", clientOfB.keyFile, "version"]);
    assert.equal(withB.code, ExitCode.Unavailable);
    // Under TLS 1.3 the refusal reaches the client as an alert or, when the reset wins, as ECONNRESET.
    assert.match(
      withB.stderr,
      /refused the TLS handshake: it requires a client certificate|ECONNRESET \(a TLS server also closes like this when it refuses the client certificate/,
    );
    const r = await runCli([...withClientCert(required.url), "version"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Server: peer=user:alice /m);
    const images = await runCli([...withClientCert(required.url), "image", "list"]);
    assert.equal(images.code, 0, images.stderr);
    assert.match(images.stdout, /node\/peer: not asked: user:alice/);
    assert.match(images.stdout, /node\/http: not asked: 2\.0/);
    assert.deepEqual(
      required.seen.map((s) => s.peer),
      ["user:alice", "user:alice"],
      "no call without the right certificate reached a handler",
    );
  });

  it("takes server, inline CA, client certificate and token from the current context of the config file", async () => {
    const home = await mkdtemp(join(dir, "home-"));
    const file = join(home, ".config", "hypervisor", "config.yaml");
    await mkdir(dirname(file), { recursive: true });
    const text = [
      "current-context: lab",
      "contexts:",
      "  - name: lab",
      `    server: ${required.url}`,
      "    ca-data: |",
      ...caA.certPem
        .trim()
        .split("\n")
        .map((l) => `      ${l}`),
      "    credentials:",
      `      client-cert-file: ${client.certFile}`,
      `      client-key-file: ${client.keyFile}`,
      "      token: s3cr3t-token",
      "",
    ].join("\n");
    await writeFile(file, text, { mode: 0o600 });
    const r = await runCli(["version"], { env: { HOME: home } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Server: peer=user:alice \(API v1, store auth=Bearer s3cr3t-token, node 1\.1\)$/m);
    assert.equal(r.stderr, "");
    // A --server elsewhere keeps the context's CA and certificate but does not get its token.
    const elsewhere = await runCli(["--server", optional.url, "version"], { env: { HOME: home } });
    assert.equal(elsewhere.code, 0, elsewhere.stderr);
    assert.match(elsewhere.stdout, /^Server: peer=user:alice \(API v1, store auth=none,/m);
    assert.match(elsewhere.stderr, /^warning: not sending the token of context lab to https:\/\/127\.0\.0\.1:\d+ \(from --server\)/);
    // The file is secret: readable by others, it is used but warned about.
    await chmod(file, 0o644);
    const exposed = await runCli(["version"], { env: { HOME: home } });
    assert.equal(exposed.code, 0, exposed.stderr);
    assert.equal(exposed.stderr, `warning: ${file} holds a key or token and others may read it: chmod 600 ${file}\n`);
  });

  it("config set-context --embed stores the PEM, and the context works from it alone", async () => {
    const home = await mkdtemp(join(dir, "home-"));
    const env = { HOME: home };
    const set = await runCli(["config", "set-context", "emb", "--embed", ...withClientCert(required.url)], { env });
    assert.equal(set.code, 0, set.stderr);
    assert.equal(set.stdout, "context emb created and made current (there was none)\n");
    const r = await runCli(["version"], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Server: peer=user:alice /m);
  });
});

describe("ctl console over TLS", () => {
  it("opens the console's WebSocket with the same CA, client certificate and token as the API calls", async () => {
    const srv = await caA.issue("console-server", { cn: "server:console", san: ["IP:127.0.0.1"], eku: ["serverAuth"] });
    const handler = connectNodeAdapter({
      routes: (router) => router.service(ConsoleService, { createConsoleTicket: () => ({ ticket: "t1", path: "/console/t1" }) }),
    });
    const server = createHttpsServer(
      { cert: srv.certPem, key: srv.keyPem, ca: caA.certPem, requestCert: true, rejectUnauthorized: true },
      handler,
    );
    // The "console" tells who opened it, then ends the session.
    const wss = new WebSocketServer({ server, path: "/console/t1" });
    wss.on("connection", (ws, req) => {
      const peer = (req.socket as TLSSocket).getPeerCertificate().subject?.CN ?? "none";
      ws.send(`peer=${String(peer)} auth=${req.headers.authorization ?? "none"}\n`);
      ws.close();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      let stdout = "";
      let stderr = "";
      const code = await run([...withClientCert(url), "instance", "console", "vm1"], {
        stdout: { write: (t: string) => (stdout += t) },
        stderr: { write: (t: string) => (stderr += t) },
        stdin: new PassThrough(),
        env: { HYPERVISOR_TOKEN: "tok-1" },
      });
      assert.equal(code, 0, stderr);
      assert.equal(stdout, "peer=user:alice auth=Bearer tok-1\n");
      assert.match(stderr, /^Connected to the serial console of vm1\./);
    } finally {
      wss.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
