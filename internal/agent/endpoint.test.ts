// The endpoint's listener with TLS: mutual TLS with requestCert (the step the identity issue takes
// next), a client certificate from another CA refused, and the token still checked on top. The
// certificates are made here with @peculiar/x509 over Node's WebCrypto (ECDSA P-256).
import assert from "node:assert/strict";
import { webcrypto } from "node:crypto";
import { after, before, describe, it } from "node:test";
import * as x509 from "@peculiar/x509";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AgentService } from "../../api/gen/hypervisor/v1/agent_pb.js";
import { logger } from "../../pkg/log/index.js";
import { agentService } from "./agent-service.js";
import { AgentEndpoint } from "./endpoint.js";

// Node's WebCrypto is the DOM Crypto the library types (this project compiles without the DOM lib).
x509.cryptoProvider.set(webcrypto as never);
const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };

interface Pem {
  cert: string;
  key: string;
}

async function keyPem(k: webcrypto.CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", k));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString("base64").replace(/.{64}/g, "$&\n")}\n-----END PRIVATE KEY-----\n`;
}

async function makeCa(name: string): Promise<Pem & { keys: webcrypto.CryptoKeyPair; x: x509.X509Certificate }> {
  const keys = await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
  const x = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=${name}`,
    keys,
    signingAlgorithm: ALG,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3_600_000),
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
    ],
  });
  return { keys, x, cert: x.toString("pem"), key: await keyPem(keys.privateKey) };
}

async function issue(ca: Awaited<ReturnType<typeof makeCa>>, cn: string, server: boolean): Promise<Pem> {
  const keys = await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
  const x = await x509.X509CertificateGenerator.create({
    subject: `CN=${cn}`,
    issuer: ca.x.subject,
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    signingAlgorithm: ALG,
    serialNumber: Date.now().toString(16),
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3_600_000),
    extensions: [
      new x509.ExtendedKeyUsageExtension([server ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
      ...(server ? [new x509.SubjectAlternativeNameExtension([{ type: "ip", value: "127.0.0.1" }])] : []),
    ],
  });
  return { cert: x.toString("pem"), key: await keyPem(keys.privateKey) };
}

describe("the agent endpoint over mutual TLS", () => {
  let endpoint: AgentEndpoint;
  let url: string;
  let ca: Awaited<ReturnType<typeof makeCa>>;
  let client: Pem;
  let stranger: Pem;
  /** Calls that reached the handler. */
  let served = 0;

  before(async () => {
    ca = await makeCa("hypervisor test ca");
    const other = await makeCa("another ca");
    const agentCert = await issue(ca, "node:n1", true);
    client = await issue(ca, "server:s1", false);
    stranger = await issue(other, "server:s1", false);
    const log = logger("endpoint-test");
    const service = agentService(
      {
        logFile: () => Promise.reject(new ConnectError("none", Code.NotFound)),
        importImage: () => Promise.reject(new ConnectError("none", Code.FailedPrecondition)),
        listImages: async () => {
          served++;
          return [{ name: "img:1", digest: "sha256:00", sizeBytes: 1, driver: "containerd" }];
        },
        console: () => Promise.reject(new ConnectError("none", Code.NotFound)),
        purgeOrphan: () => Promise.reject(new ConnectError("none", Code.NotFound)),
      },
      { nodeName: "n1", log, spoolDir: "/nonexistent" },
    );
    endpoint = new AgentEndpoint(service, log, { tls: { key: agentCert.key, cert: agentCert.cert, ca: ca.cert, requestCert: true } });
    url = `${endpoint.scheme}://127.0.0.1:${await endpoint.listen("127.0.0.1", 0)}`;
  });

  after(() => endpoint.close());

  const call = async (nodeOptions: { ca: string; cert?: string; key?: string }, token: string | undefined) => {
    const transport = createGrpcTransport({ baseUrl: url, nodeOptions });
    const agent = createClient(AgentService, transport);
    try {
      const r = await agent.listImages({}, token ? { headers: { authorization: `Bearer ${token}` } } : {});
      return r.images.map((i) => i.name).join(",");
    } catch (e) {
      return ConnectError.from(e);
    }
  };

  it("serves a client with a certificate from the cluster CA and the token", async () => {
    assert.equal(url.startsWith("https://"), true);
    assert.equal(await call({ ca: ca.cert, cert: client.cert, key: client.key }, endpoint.token), "img:1");
  });

  it("refuses a client without a certificate, or with one from another CA, before any call", async () => {
    const before = served;
    for (const opts of [{ ca: ca.cert }, { ca: ca.cert, cert: stranger.cert, key: stranger.key }]) {
      const r = await call(opts, endpoint.token);
      // Under TLS 1.3 the client learns of the refusal after its side of the handshake, so the
      // error it sees varies (an alert, a cancelled stream); what matters is that nothing ran.
      assert.ok(r instanceof ConnectError, `refused: ${String(r)}`);
    }
    assert.equal(served, before, "no call reached the handler");
  });

  it("still wants the token from a client with a good certificate (until the token goes)", async () => {
    const r = await call({ ca: ca.cert, cert: client.cert, key: client.key }, undefined);
    assert.ok(r instanceof ConnectError);
    assert.equal(r.code, Code.Unauthenticated);
  });
});
