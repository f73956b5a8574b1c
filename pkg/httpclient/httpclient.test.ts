// Client sockets with TCP_NODELAY: an https request through httpsAgent() reaches a real local
// server with the caller's TLS options (the CA checked), and every socket it opens had
// setNoDelay(true) called on it (Node's own https agent never calls it).
import assert from "node:assert/strict";
import { after, before, describe, it, mock } from "node:test";
import http2 from "node:http2";
import https from "node:https";
import { Socket } from "node:net";
import { createCa, issueServerCertificate, parseCa, type CertificateAuthority } from "../pki/index.js";
import { httpsAgent } from "./index.js";

describe("client sockets with TCP_NODELAY", () => {
  let ca: CertificateAuthority;
  let tlsServer: http2.Http2SecureServer;
  let port = 0;
  let onNoDelay: () => boolean[] = () => [];
  let seen = 0;
  /** setNoDelay calls since the last look: true for each that turned it on. */
  const noDelaysSince = () => {
    const all = onNoDelay();
    const fresh = all.slice(seen);
    seen = all.length;
    return fresh;
  };

  before(async () => {
    const made = await createCa();
    ca = await parseCa(made.certPem, made.keyPem);
    const leaf = await issueServerCertificate(ca, { name: "s1", dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"], ttlSeconds: 3600 });
    const answer = (_req: unknown, res: http2.Http2ServerResponse) => res.end("ok");
    tlsServer = http2.createSecureServer({ key: leaf.keyPem, cert: leaf.certPem, allowHTTP1: true }, answer);
    port = await listen(tlsServer);
    // Counted, then passed on to the real method (mock.method calls through to it).
    const spy = mock.method(Socket.prototype, "setNoDelay");
    onNoDelay = () => spy.mock.calls.map((c) => c.arguments[0] !== false);
  });

  after(async () => {
    mock.restoreAll();
    await new Promise((r) => tlsServer.close(r));
  });

  it("https over httpsAgent(): the CA given per request, and the socket sends at once", async () => {
    noDelaysSince();
    const agent = httpsAgent();
    try {
      const body = await new Promise<string>((resolve, reject) => {
        const req = https.request({ host: "127.0.0.1", port, path: "/", ca: ca.certPem, agent }, (res) => {
          let b = "";
          res.on("data", (d: Buffer) => (b += d.toString())).on("end", () => resolve(b));
        });
        req.on("error", reject).end();
      });
      assert.equal(body, "ok");
      const noDelays = noDelaysSince();
      assert.ok(noDelays.length >= 1 && noDelays.every(Boolean), `setNoDelay calls: ${JSON.stringify(noDelays)}`);
      // And the CA is checked: another CA's server certificate is refused.
      const other = await createCa();
      await assert.rejects(
        new Promise((resolve, reject) =>
          https.request({ host: "127.0.0.1", port, path: "/", ca: other.certPem, agent }, resolve).on("error", reject).end(),
        ),
        /self[- ]signed|unable to verify|unknown ca/i,
      );
    } finally {
      agent.destroy();
    }
  });
});

function listen(server: http2.Http2SecureServer): Promise<number> {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port)));
}
