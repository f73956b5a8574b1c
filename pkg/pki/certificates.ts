/*
 * The cluster CA and what it signs. One key type (ECDSA P-256), one signature (ECDSA-SHA256).
 *
 *   createCa ──► self-signed CA (CA:TRUE, pathlen 0, keyCertSign|cRLSign)
 *       │
 *       ├── issueServerCertificate(name, dnsNames, ipAddresses): key made here, for a server
 *       │
 *       ├── signNodeCsr(csr, node) ◄── generateKeyAndCsr("node:<name>") on the agent: the node's
 *       │                                key never leaves it; the CA takes only the public key
 *       │                                from the CSR and decides the subject and every extension
 *       │
 *       └── signUserCsr(csr, user) ◄── generateKeyAndCsr("user:<name>") in hypervisor-ctl: the
 *                                        same, with client authentication as its only usage
 *
 * Every certificate: a random positive 16-byte serial, notBefore one minute back (clock skew
 * between machines), notAfter no later than the CA's own.
 */
import { randomBytes } from "node:crypto";
import { isIP } from "node:net";
import * as x509 from "@peculiar/x509";
import { NAME_RE, show } from "../validation/index.js";
import { CertificateParamsError, CsrRejectedError } from "./errors.js";
import { commonNameOf, subjectOf } from "./identity.js";
import { type CryptoKey, generateKeyPair, isP256, privateKeyFromPem, privateKeyToPem, publicKeyDerOf, SIGNING_ALGORITHM } from "./keys.js";

/** A loaded CA: its certificate, and its private key as a non-extractable signing key. */
export interface CertificateAuthority {
  readonly certPem: string;
  readonly cert: x509.X509Certificate;
  readonly privateKey: CryptoKey;
}

export interface KeyAndCertificate {
  certPem: string;
  keyPem: string;
}

/** Backdating of notBefore, for clocks a little behind the issuer's. */
export const CLOCK_SKEW_MS = 60_000;
export const DEFAULT_CA_TTL_SECONDS = 10 * 365 * 24 * 3600;
export const CA_COMMON_NAME = "hypervisor cluster ca";

const KEY_USAGE_LEAF = x509.KeyUsageFlags.digitalSignature;
const EKU_SERVER_AND_CLIENT = [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth];
// A user is never a TLS server: without serverAuth, no TLS client accepts its certificate as one.
const EKU_CLIENT_ONLY = [x509.ExtendedKeyUsage.clientAuth];

/** 16 random bytes, top bit clear (a positive INTEGER) and the first byte non-zero (DER keeps all 16). */
export function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f || 0x01;
  return b.toString("hex");
}

function checkTtl(field: string, ttlSeconds: number): void {
  if (!Number.isSafeInteger(ttlSeconds) || ttlSeconds <= 0) {
    throw new CertificateParamsError(field, `${show(ttlSeconds)} is not a positive whole number of seconds`);
  }
}

function checkIdentityName(field: string, name: string): void {
  if (!NAME_RE.test(name)) {
    throw new CertificateParamsError(
      field,
      `${show(name)} is not a valid name: use 1-63 lowercase letters, digits and '-', starting with a letter`,
    );
  }
}

function validity(now: Date, ttlSeconds: number, ca?: CertificateAuthority): { notBefore: Date; notAfter: Date } {
  const notBefore = new Date(now.getTime() - CLOCK_SKEW_MS);
  let notAfter = new Date(now.getTime() + ttlSeconds * 1000);
  // A certificate outliving its issuer would fail verification anyway; say the truth in it.
  if (ca && notAfter > ca.cert.notAfter) notAfter = ca.cert.notAfter;
  return { notBefore, notAfter };
}

export interface CreateCaOptions {
  commonName?: string;
  ttlSeconds?: number;
  now?: Date;
}

/** A new self-signed CA, as PEM (the caller stores the key; parseCa loads the pair). */
export async function createCa(opts: CreateCaOptions = {}): Promise<KeyAndCertificate> {
  const ttl = opts.ttlSeconds ?? DEFAULT_CA_TTL_SECONDS;
  checkTtl("ttlSeconds", ttl);
  const keys = await generateKeyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [opts.commonName ?? CA_COMMON_NAME] }, { O: ["hypervisor"] }],
    ...validity(opts.now ?? new Date(), ttl),
    keys,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString("pem"), keyPem: await privateKeyToPem(keys.privateKey) };
}

/** The CA from its PEM files; refuses a certificate that is not a CA or a key that is not its own. */
export async function parseCa(certPem: string, keyPem: string): Promise<CertificateAuthority> {
  let cert: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate(certPem);
  } catch (e) {
    throw new CertificateParamsError("ca certificate", `not a PEM certificate (${e instanceof Error ? e.message : String(e)})`);
  }
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  if (!bc?.ca) throw new CertificateParamsError("ca certificate", "is not a CA certificate (no basicConstraints CA:TRUE)");
  let privateKey: CryptoKey;
  try {
    privateKey = await privateKeyFromPem(keyPem);
  } catch (e) {
    // Never the key's text in a message.
    throw new CertificateParamsError("ca key", e instanceof Error ? e.message : "unreadable");
  }
  if (!Buffer.from(publicKeyDerOf(keyPem)).equals(Buffer.from(cert.publicKey.rawData))) {
    throw new CertificateParamsError("ca key", "does not match the ca certificate");
  }
  return { certPem: cert.toString("pem"), cert, privateKey };
}

async function sign(
  ca: CertificateAuthority,
  subject: x509.JsonName,
  publicKey: CryptoKey | x509.PublicKey,
  ttlSeconds: number,
  now: Date,
  san: x509.JsonGeneralNames,
  usages: readonly string[] = EKU_SERVER_AND_CLIENT,
): Promise<x509.X509Certificate> {
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(KEY_USAGE_LEAF, true),
    new x509.ExtendedKeyUsageExtension([...usages], false),
    await x509.SubjectKeyIdentifierExtension.create(publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
  ];
  if (san.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(san, false));
  return x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject,
    issuer: ca.cert.subjectName,
    ...validity(now, ttlSeconds, ca),
    publicKey,
    signingKey: ca.privateKey,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions,
  });
}

export interface ServerCertificateParams {
  /** The server's name: the certificate says CN=server:<name>. */
  name: string;
  /** Names clients dial it by (checked against the SAN by every TLS client). */
  dnsNames: readonly string[];
  ipAddresses: readonly string[];
  ttlSeconds: number;
  now?: Date;
}

// A DNS name as a TLS client matches it: labels of letters, digits and '-', a leading "*." allowed.
const DNS_NAME_RE = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

/** Subject alternative names, each checked: DNS names as TLS clients match them, IP addresses. */
function sanOf(dnsNames: readonly string[], ipAddresses: readonly string[]): x509.JsonGeneralNames {
  dnsNames.forEach((d, i) => {
    if (d.length > 253 || !DNS_NAME_RE.test(d)) throw new CertificateParamsError(`dnsNames[${i}]`, `${show(d)} is not a DNS name`);
  });
  ipAddresses.forEach((ip, i) => {
    if (isIP(ip) === 0) throw new CertificateParamsError(`ipAddresses[${i}]`, `${show(ip)} is not an IP address`);
  });
  return [...dnsNames.map((value) => ({ type: "dns" as const, value })), ...ipAddresses.map((value) => ({ type: "ip" as const, value }))];
}

/** A key and a certificate for a server (made here: a server is trusted with the CA anyway). */
export async function issueServerCertificate(ca: CertificateAuthority, p: ServerCertificateParams): Promise<KeyAndCertificate> {
  checkIdentityName("name", p.name);
  checkTtl("ttlSeconds", p.ttlSeconds);
  const san = sanOf(p.dnsNames, p.ipAddresses);
  const keys = await generateKeyPair();
  const cert = await sign(ca, subjectOf({ kind: "server", name: p.name }), keys.publicKey, p.ttlSeconds, p.now ?? new Date(), san);
  return { certPem: cert.toString("pem"), keyPem: await privateKeyToPem(keys.privateKey) };
}

export interface EtcdCertificateParams {
  /**
   * "etcd": the certificate etcd serves (and its gateway dials itself with); "hypervisor-server":
   * the servers' etcd identity (with --client-cert-auth the CN is the etcd user).
   */
  commonName: "etcd" | "hypervisor-server";
  dnsNames: readonly string[];
  ipAddresses: readonly string[];
  ttlSeconds: number;
  now?: Date;
}

/**
 * A key and a certificate for etcd's side of the cluster: etcd's serving certificate, or the
 * servers' etcd client certificate. Their subject has no hypervisor organization, so neither is a
 * server or node identity at the API.
 */
export async function issueEtcdCertificate(ca: CertificateAuthority, p: EtcdCertificateParams): Promise<KeyAndCertificate> {
  if (p.commonName !== "etcd" && p.commonName !== "hypervisor-server")
    throw new CertificateParamsError("commonName", `${show(p.commonName)} is not etcd or hypervisor-server`);
  checkTtl("ttlSeconds", p.ttlSeconds);
  const san = sanOf(p.dnsNames, p.ipAddresses);
  const keys = await generateKeyPair();
  const cert = await sign(ca, [{ CN: [p.commonName] }], keys.publicKey, p.ttlSeconds, p.now ?? new Date(), san);
  return { certPem: cert.toString("pem"), keyPem: await privateKeyToPem(keys.privateKey) };
}

/** Agent (or ctl) side: a new key and a CSR for `commonName` ("node:<name>", "user:<name>"). Only the CSR is sent. */
export async function generateKeyAndCsr(commonName: string): Promise<{ keyPem: string; csrPem: string }> {
  const keys = await generateKeyPair();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [commonName] }],
    keys,
    signingAlgorithm: SIGNING_ALGORITHM,
  });
  return { keyPem: await privateKeyToPem(keys.privateKey), csrPem: csr.toString("pem") };
}

export interface SignNodeCsrParams {
  node: string;
  ttlSeconds: number;
  now?: Date;
}

/** At most this many bytes of CSR are parsed (a P-256 CSR is about 400 bytes of PEM). */
export const MAX_CSR_PEM_BYTES = 16 * 1024;

/**
 * The public key of a CSR that proves possession of it (signed by that key), names exactly
 * CN=`commonName`, and carries a P-256 key. Nothing else of it is used.
 */
async function checkedCsrKey(csrPem: string, commonName: string): Promise<x509.PublicKey> {
  if (csrPem.length > MAX_CSR_PEM_BYTES) {
    throw new CsrRejectedError("malformed", `csr is ${csrPem.length} bytes; at most ${MAX_CSR_PEM_BYTES} allowed`);
  }
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch {
    throw new CsrRejectedError("malformed", "csr is not a PEM certificate request");
  }
  if (!isP256(new Uint8Array(csr.publicKey.rawData))) {
    throw new CsrRejectedError("wrong-key", "csr key must be ECDSA P-256");
  }
  let verified = false;
  try {
    verified = await csr.verify();
  } catch {
    verified = false;
  }
  if (!verified) throw new CsrRejectedError("bad-signature", "csr signature does not verify with its own key");
  const cns = csr.subjectName.getField("CN");
  if (cns.length !== 1 || cns[0] !== commonName) {
    throw new CsrRejectedError(
      "wrong-subject",
      `csr subject CN must be exactly ${show(commonName)}, got ${cns.map((c) => show(c)).join(", ") || "none"}`,
    );
  }
  return csr.publicKey;
}

/**
 * Server side: a certificate for node `node` from its CSR. The CSR must be signed by the key it
 * carries (proof of possession), name exactly CN=node:<node>, and carry a P-256 key. Whatever else
 * it asks for (extensions, other subject fields) is ignored: the CA decides.
 */
export async function signNodeCsr(ca: CertificateAuthority, csrPem: string, p: SignNodeCsrParams): Promise<string> {
  checkIdentityName("node", p.node);
  checkTtl("ttlSeconds", p.ttlSeconds);
  const publicKey = await checkedCsrKey(csrPem, commonNameOf("node", p.node));
  // No SAN for a node: it must never pass a hostname check meant for a server (see identity.ts).
  const cert = await sign(ca, subjectOf({ kind: "node", name: p.node }), publicKey, p.ttlSeconds, p.now ?? new Date(), []);
  return cert.toString("pem");
}

export interface SignUserCsrParams {
  user: string;
  ttlSeconds: number;
  now?: Date;
}

/**
 * Server side: a client certificate for user `user` from its CSR, under the rules of signNodeCsr
 * (proof of possession, exactly CN=user:<user>, P-256, nothing else taken from the CSR). It says
 * CN=user:<user>, O=hypervisor:users, client authentication only, no SAN: a client of the API
 * whose rights are its role bindings, never a server, a node, or an etcd user.
 */
export async function signUserCsr(ca: CertificateAuthority, csrPem: string, p: SignUserCsrParams): Promise<string> {
  checkIdentityName("user", p.user);
  checkTtl("ttlSeconds", p.ttlSeconds);
  const publicKey = await checkedCsrKey(csrPem, commonNameOf("user", p.user));
  const cert = await sign(ca, subjectOf({ kind: "user", name: p.user }), publicKey, p.ttlSeconds, p.now ?? new Date(), [], EKU_CLIENT_ONLY);
  return cert.toString("pem");
}
