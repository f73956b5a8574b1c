// The CA and what it signs, checked by what consumes them: Node's X509Certificate (OpenSSL), a real
// mutual-TLS handshake, and openssl for the CA hash.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import * as tls from "node:tls";
import * as x509 from "@peculiar/x509";
import {
  caHash,
  CertificateParamsError,
  CLOCK_SKEW_MS,
  createCa,
  CsrRejectedError,
  generateKeyAndCsr,
  identityOf,
  issueServerCertificate,
  parseCa,
  signNodeCsr,
  signUserCsr,
  type CertificateAuthority,
} from "./index.js";
import { publicKeyDerOf, SIGNING_ALGORITHM } from "./keys.js";

const NOW = new Date("2026-06-01T12:00:00Z");

async function newCa(opts: Parameters<typeof createCa>[0] = {}): Promise<CertificateAuthority> {
  const { certPem, keyPem } = await createCa({ now: NOW, ...opts });
  return parseCa(certPem, keyPem);
}

function serialBytes(cert: X509Certificate): number {
  return cert.serialNumber.length / 2;
}

describe("pki certificates", () => {
  it("creates a self-signed P-256 CA that OpenSSL takes as a CA", async () => {
    const ca = await newCa();
    const c = new X509Certificate(ca.certPem);
    assert.equal(c.ca, true);
    assert.equal(c.checkIssued(c), true);
    assert.equal(c.verify(c.publicKey), true);
    assert.equal(c.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
    assert.equal(new Date(c.validFrom).getTime(), NOW.getTime() - CLOCK_SKEW_MS);
    assert.equal(identityOf(ca.certPem), undefined, "the CA is neither a server nor a node");
  });

  it("refuses a key that is not the CA certificate's, and a certificate that is not a CA", async () => {
    const a = await createCa();
    const b = await createCa();
    await assert.rejects(
      parseCa(a.certPem, b.keyPem),
      (e) => e instanceof CertificateParamsError && /^ca key: does not match/.test(e.message),
    );
    const ca = await parseCa(a.certPem, a.keyPem);
    const leaf = await issueServerCertificate(ca, { name: "s1", dnsNames: [], ipAddresses: [], ttlSeconds: 60 });
    await assert.rejects(
      parseCa(leaf.certPem, leaf.keyPem),
      (e) => e instanceof CertificateParamsError && /^ca certificate: is not a CA/.test(e.message),
    );
  });

  it("issues a server certificate with its names, both usages, a random 16-byte serial, and a backdated start", async () => {
    const ca = await newCa();
    const { certPem, keyPem } = await issueServerCertificate(ca, {
      name: "cp-1",
      dnsNames: ["cp-1.example.com", "localhost"],
      ipAddresses: ["127.0.0.1", "::1"],
      ttlSeconds: 3600,
      now: NOW,
    });
    const c = new X509Certificate(certPem);
    assert.equal(c.verify(new X509Certificate(ca.certPem).publicKey), true);
    assert.equal(c.ca, false);
    assert.deepEqual(identityOf(certPem), { kind: "server", name: "cp-1" });
    assert.equal(c.subjectAltName, "DNS:cp-1.example.com, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1");
    assert.deepEqual(c.keyUsage?.sort(), ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
    assert.equal(new Date(c.validFrom).getTime(), NOW.getTime() - CLOCK_SKEW_MS);
    assert.equal(new Date(c.validTo).getTime(), NOW.getTime() + 3600_000);
    assert.equal(serialBytes(c), 16);
    assert.ok(Number.parseInt(c.serialNumber.slice(0, 2), 16) < 0x80, "serial is positive");
    assert.ok(Buffer.from(publicKeyDerOf(keyPem)).equals(c.publicKey.export({ format: "der", type: "spki" })));
    const other = new X509Certificate(
      (await issueServerCertificate(ca, { name: "cp-1", dnsNames: [], ipAddresses: [], ttlSeconds: 60 })).certPem,
    );
    assert.notEqual(other.serialNumber, c.serialNumber);
  });

  it("never lets a certificate outlive the CA", async () => {
    const ca = await newCa({ ttlSeconds: 600 });
    const { certPem } = await issueServerCertificate(ca, { name: "s", dnsNames: [], ipAddresses: [], ttlSeconds: 86400, now: NOW });
    assert.equal(new X509Certificate(certPem).validTo, new X509Certificate(ca.certPem).validTo);
  });

  it("refuses bad server certificate parameters, naming the field and value", async () => {
    const ca = await newCa();
    const base = { name: "s", dnsNames: [] as string[], ipAddresses: [] as string[], ttlSeconds: 60 };
    const cases: [Partial<typeof base>, RegExp][] = [
      [{ name: "S 1" }, /^name: "S 1" is not a valid name/],
      [{ dnsNames: ["ok.example", "bad name"] }, /^dnsNames\[1\]: "bad name" is not a DNS name/],
      [{ ipAddresses: ["300.1.1.1"] }, /^ipAddresses\[0\]: "300\.1\.1\.1" is not an IP address/],
      [{ ttlSeconds: 0 }, /^ttlSeconds: "0" is not a positive whole number of seconds/],
      [{ ttlSeconds: 1.5 }, /^ttlSeconds: /],
    ];
    for (const [change, want] of cases) {
      await assert.rejects(
        issueServerCertificate(ca, { ...base, ...change }),
        (e) => e instanceof CertificateParamsError && want.test(e.message),
        String(want),
      );
    }
  });

  it("signs a node CSR: the node's own key, CN=node:<name>, no SAN, both usages", async () => {
    const ca = await newCa();
    const { keyPem, csrPem } = await generateKeyAndCsr("node:worker-1");
    const certPem = await signNodeCsr(ca, csrPem, { node: "worker-1", ttlSeconds: 600, now: NOW });
    const c = new X509Certificate(certPem);
    assert.equal(c.verify(new X509Certificate(ca.certPem).publicKey), true);
    assert.deepEqual(identityOf(certPem), { kind: "node", name: "worker-1" });
    assert.equal(c.subjectAltName, undefined);
    assert.deepEqual(c.keyUsage?.sort(), ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
    assert.equal(c.ca, false);
    assert.equal(serialBytes(c), 16);
    assert.ok(Buffer.from(publicKeyDerOf(keyPem)).equals(c.publicKey.export({ format: "der", type: "spki" })), "the node's key");
    assert.equal(new Date(c.validTo).getTime(), NOW.getTime() + 600_000);
  });

  it("ignores what a CSR asks for beyond its key: no CA, no SAN, no other usage, its own subject", async () => {
    const ca = await newCa();
    const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      name: [{ CN: ["node:worker-1"] }, { O: ["hypervisor:servers"] }],
      keys,
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(true, 5, true),
        new x509.SubjectAlternativeNameExtension([{ type: "dns", value: "api.example.com" }]),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.codeSigning]),
      ],
    });
    const certPem = await signNodeCsr(ca, csr.toString("pem"), { node: "worker-1", ttlSeconds: 60 });
    const c = new X509Certificate(certPem);
    assert.equal(c.ca, false);
    assert.equal(c.subjectAltName, undefined);
    assert.deepEqual(c.keyUsage?.sort(), ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
    assert.equal(c.subject, "CN=node:worker-1\nO=hypervisor:nodes");
  });

  it("refuses a CSR that is malformed, badly signed, for another name, or not P-256", async () => {
    const ca = await newCa();
    const good = await generateKeyAndCsr("node:worker-1");
    // Flip a byte inside the signed part (the subject's CN): the signature no longer verifies.
    const der = Buffer.from(good.csrPem.replace(/-----[^-]+-----|\s/g, ""), "base64");
    const at = der.indexOf(Buffer.from("worker-1"));
    der[at] = "W".charCodeAt(0);
    const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString("base64")}\n-----END CERTIFICATE REQUEST-----\n`;
    const p384 = await x509.Pkcs10CertificateRequestGenerator.create({
      name: "CN=node:worker-1",
      keys: await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-384" }, true, ["sign", "verify"]),
      signingAlgorithm: { name: "ECDSA", hash: "SHA-384" },
    });
    const twoCns = await x509.Pkcs10CertificateRequestGenerator.create({
      name: [{ CN: ["node:worker-1"] }, { CN: ["node:worker-2"] }],
      keys: await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]),
      signingAlgorithm: SIGNING_ALGORITHM,
    });
    const cases: [string, string, string, RegExp][] = [
      ["garbage", "not a csr", "malformed", /^csr is not a PEM certificate request$/],
      ["huge", "x".repeat(20_000), "malformed", /^csr is 20000 bytes; at most 16384 allowed$/],
      ["tampered", tampered, "bad-signature", /^csr signature does not verify/],
      [
        "another node",
        (await generateKeyAndCsr("node:worker-2")).csrPem,
        "wrong-subject",
        /^csr subject CN must be exactly "node:worker-1", got "node:worker-2"$/,
      ],
      ["a server", (await generateKeyAndCsr("server:worker-1")).csrPem, "wrong-subject", /got "server:worker-1"$/],
      ["two CNs", twoCns.toString("pem"), "wrong-subject", /^csr subject CN must be exactly/],
      ["P-384", p384.toString("pem"), "wrong-key", /^csr key must be ECDSA P-256$/],
    ];
    for (const [what, csrPem, reason, message] of cases) {
      await assert.rejects(
        signNodeCsr(ca, csrPem, { node: "worker-1", ttlSeconds: 60 }),
        (e) => e instanceof CsrRejectedError && e.reason === reason && message.test(e.message),
        what,
      );
    }
    await assert.rejects(
      signNodeCsr(ca, good.csrPem, { node: "Worker_1", ttlSeconds: 60 }),
      (e) => e instanceof CertificateParamsError && e.field === "node" && /^node: "Worker_1" is not a valid name/.test(e.message),
    );
  });

  it("signs a user CSR: the user's own key, CN=user:<name>, O=hypervisor:users, client authentication only, no SAN", async () => {
    const ca = await newCa();
    const { keyPem, csrPem } = await generateKeyAndCsr("user:robot");
    const certPem = await signUserCsr(ca, csrPem, { user: "robot", ttlSeconds: 600, now: NOW });
    const c = new X509Certificate(certPem);
    assert.equal(c.verify(new X509Certificate(ca.certPem).publicKey), true);
    assert.deepEqual(identityOf(certPem), { kind: "user", name: "robot" });
    assert.equal(c.subject, "CN=user:robot\nO=hypervisor:users");
    assert.equal(c.subjectAltName, undefined);
    assert.deepEqual(c.keyUsage, ["1.3.6.1.5.5.7.3.2"], "clientAuth and nothing else");
    assert.equal(c.ca, false);
    assert.equal(serialBytes(c), 16);
    assert.ok(Buffer.from(publicKeyDerOf(keyPem)).equals(c.publicKey.export({ format: "der", type: "spki" })), "the user's key");
    assert.equal(new Date(c.validTo).getTime(), NOW.getTime() + 600_000);
  });

  it("takes nothing but the key from a user's CSR: no server usage, no SAN, no CA, not a node's or a server's subject", async () => {
    const ca = await newCa();
    const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      name: [{ CN: ["user:robot"] }, { O: ["hypervisor:servers"] }],
      keys,
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(true, 5, true),
        new x509.SubjectAlternativeNameExtension([{ type: "dns", value: "localhost" }]),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      ],
    });
    const certPem = await signUserCsr(ca, csr.toString("pem"), { user: "robot", ttlSeconds: 60 });
    const c = new X509Certificate(certPem);
    assert.equal(c.ca, false);
    assert.equal(c.subjectAltName, undefined);
    assert.deepEqual(c.keyUsage, ["1.3.6.1.5.5.7.3.2"]);
    assert.equal(c.subject, "CN=user:robot\nO=hypervisor:users");
    assert.deepEqual(identityOf(certPem), { kind: "user", name: "robot" });
  });

  it("refuses a user CSR for another user, a node or a server, and a user name that is not a DNS label", async () => {
    const ca = await newCa();
    const cases: [string, string, RegExp][] = [
      ["another user", "user:mallory", /^csr subject CN must be exactly "user:robot", got "user:mallory"$/],
      ["a node", "node:robot", /got "node:robot"$/],
      ["a server", "server:robot", /got "server:robot"$/],
      ["a bare name", "robot", /got "robot"$/],
    ];
    for (const [what, cn, message] of cases) {
      await assert.rejects(
        signUserCsr(ca, (await generateKeyAndCsr(cn)).csrPem, { user: "robot", ttlSeconds: 60 }),
        (e) => e instanceof CsrRejectedError && e.reason === "wrong-subject" && message.test(e.message),
        what,
      );
    }
    await assert.rejects(
      signUserCsr(ca, "x".repeat(20_000), { user: "robot", ttlSeconds: 60 }),
      (e) => e instanceof CsrRejectedError && e.reason === "malformed",
    );
    for (const bad of ["Robot", "robot.example", "user:robot", "", "a".repeat(64)]) {
      await assert.rejects(
        signUserCsr(ca, (await generateKeyAndCsr(`user:${bad}`)).csrPem, { user: bad, ttlSeconds: 60 }),
        (e) => e instanceof CertificateParamsError && e.field === "user" && /is not a valid name/.test(e.message),
        bad,
      );
    }
    // A node's CSR signer never makes a user, and a user's never a node.
    await assert.rejects(
      signNodeCsr(ca, (await generateKeyAndCsr("user:robot")).csrPem, { node: "robot", ttlSeconds: 60 }),
      (e) => e instanceof CsrRejectedError && e.reason === "wrong-subject",
    );
  });

  it("identityOf refuses a subject whose organization does not match its kind", async () => {
    const ca = await newCa();
    const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
    const make = async (name: x509.JsonName) =>
      (
        await x509.X509CertificateGenerator.create({
          subject: name,
          issuer: ca.cert.subjectName,
          publicKey: keys.publicKey,
          signingKey: ca.privateKey,
          signingAlgorithm: SIGNING_ALGORITHM,
        })
      ).toString("pem");
    assert.equal(identityOf(await make([{ CN: ["server:a"] }, { O: ["hypervisor:nodes"] }])), undefined);
    assert.equal(identityOf(await make([{ CN: ["node:a"] }])), undefined);
    assert.equal(identityOf(await make([{ CN: ["node:A"] }, { O: ["hypervisor:nodes"] }])), undefined);
    assert.equal(identityOf(await make([{ CN: ["admin:a"] }, { O: ["hypervisor:nodes"] }])), undefined);
    assert.equal(identityOf(await make([{ CN: ["user:a"] }, { O: ["hypervisor:nodes"] }])), undefined);
    assert.equal(identityOf(await make([{ CN: ["user:a"] }, { O: ["hypervisor:servers"] }])), undefined);
    assert.equal(identityOf(await make([{ CN: ["node:a"] }, { O: ["hypervisor:users"] }])), undefined);
    assert.equal(identityOf(await make([{ CN: ["server:a"] }, { O: ["hypervisor:users"] }])), undefined);
    assert.equal(identityOf(await make([{ CN: ["user:a"] }])), undefined);
    assert.equal(identityOf(await make([{ CN: ["user:a.b"] }, { O: ["hypervisor:users"] }])), undefined);
    assert.deepEqual(identityOf(await make([{ CN: ["user:a"] }, { O: ["hypervisor:users"] }])), { kind: "user", name: "a" });
    assert.deepEqual(identityOf(await make([{ CN: ["node:a"] }, { O: ["hypervisor:nodes"] }])), { kind: "node", name: "a" });
    assert.equal(identityOf("not a certificate"), undefined);
    // DER bytes, as a TLS peer certificate's `raw`.
    assert.deepEqual(identityOf(new X509Certificate(await make([{ CN: ["node:a"] }, { O: ["hypervisor:nodes"] }])).raw), {
      kind: "node",
      name: "a",
    });
  });

  it("caHash is the sha256 of the CA certificate's DER, as openssl computes it", async () => {
    const ca = await newCa();
    const der = execFileSync("openssl", ["x509", "-outform", "DER"], { input: ca.certPem });
    const want = execFileSync("openssl", ["dgst", "-sha256", "-r"], { input: der }).toString().split(" ")[0];
    assert.equal(caHash(ca.certPem), want);
    assert.match(caHash(ca.certPem), /^[0-9a-f]{64}$/);
  });

  it("server and node certificates complete a mutual TLS handshake, each seeing the other's identity", async () => {
    const ca = await newCa({ now: new Date() });
    const server = await issueServerCertificate(ca, { name: "cp-1", dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"], ttlSeconds: 600 });
    const node = await generateKeyAndCsr("node:worker-1");
    const nodeCert = { certPem: await signNodeCsr(ca, node.csrPem, { node: "worker-1", ttlSeconds: 600 }), keyPem: node.keyPem };
    assert.deepEqual(await mutualTls(ca, server, nodeCert), {
      clientSaw: { kind: "server", name: "cp-1" },
      serverSaw: { kind: "node", name: "worker-1" },
    });
    // A node certificate cannot pass for a server: it carries no name a hostname check accepts.
    assert.equal(await servedBy(ca, nodeCert, { checkHost: true }), "ERR_TLS_CERT_ALTNAME_INVALID");
  });

  it("a user certificate authenticates a TLS client, and no TLS client takes it for a server, even without a hostname check", async () => {
    const ca = await newCa({ now: new Date() });
    const server = await issueServerCertificate(ca, { name: "cp-1", dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"], ttlSeconds: 600 });
    const user = await generateKeyAndCsr("user:robot");
    const userCert = { certPem: await signUserCsr(ca, user.csrPem, { user: "robot", ttlSeconds: 600 }), keyPem: user.keyPem };
    assert.deepEqual((await mutualTls(ca, server, userCert)).serverSaw, { kind: "user", name: "robot" });
    assert.equal(await servedBy(ca, server, { checkHost: true }), undefined, "a server's certificate is taken");
    // The chain is the cluster CA's, but the certificate's purpose is not a server's.
    assert.equal(await servedBy(ca, userCert, { checkHost: false }), "INVALID_PURPOSE");
  });
});

type Pair = { certPem: string; keyPem: string };

/** A mutual-TLS handshake on loopback: a server with `server`, requiring a client certificate of `ca`; what each side saw. */
async function mutualTls(ca: CertificateAuthority, server: Pair, client: Pair): Promise<{ clientSaw: unknown; serverSaw: unknown }> {
  const srv = tls.createServer({ cert: server.certPem, key: server.keyPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true });
  const seen = new Promise<unknown>((resolve) =>
    srv.once("secureConnection", (s: tls.TLSSocket) => {
      resolve(identityOf(s.getPeerCertificate().raw));
      s.end();
    }),
  );
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  try {
    const { port } = srv.address() as AddressInfo;
    const c = tls.connect({ host: "127.0.0.1", port, ca: ca.certPem, cert: client.certPem, key: client.keyPem, servername: "localhost" });
    await once(c, "secureConnect");
    assert.equal(c.authorized, true);
    const clientSaw = identityOf(c.getPeerCertificate().raw);
    const serverSaw = await seen;
    c.destroy();
    return { clientSaw, serverSaw };
  } finally {
    srv.close();
  }
}

/** The error code a TLS client trusting `ca` gets from a server presenting `served`; undefined if it connects. */
async function servedBy(ca: CertificateAuthority, served: Pair, o: { checkHost: boolean }): Promise<string | undefined> {
  const fake = tls.createServer({ cert: served.certPem, key: served.keyPem });
  fake.listen(0, "127.0.0.1");
  await once(fake, "listening");
  try {
    const c = tls.connect({
      host: "127.0.0.1",
      port: (fake.address() as AddressInfo).port,
      ca: ca.certPem,
      servername: "localhost",
      ...(o.checkHost ? {} : { checkServerIdentity: () => undefined }),
    });
    // undefined: the client took it (secureConnect).
    const code = await new Promise<string | undefined>((resolve) => {
      c.once("secureConnect", () => resolve(undefined));
      c.once("error", (e: NodeJS.ErrnoException) => resolve(e.code));
    });
    c.destroy();
    return code;
  } finally {
    fake.close();
  }
}
