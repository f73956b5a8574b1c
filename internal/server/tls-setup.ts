/*
 * The server's TLS identity at start: the cluster CA from pki-dir (made there on the cluster's
 * first start; a second server gets it by copying ca.crt and ca.key before its first start),
 * and a server certificate for the names clients dial, issued by that CA and kept beside it.
 *
 *   pki-dir/ca.crt, ca.key ──(absent: create, exclusively)──► CA
 *   pki-dir/server.crt, server.key ──(absent, another CA's, past two thirds of its life, or
 *                                     missing a name)──► issue again (90 days) ──► TLS settings
 *
 * And `hypervisor-server init` (initEtcdPki): the CA before etcd first starts, and what etcd needs
 * to serve TLS with client certificates of it, in pki-dir/etcd (same rules: kept while current).
 */
import { X509Certificate } from "node:crypto";
import { hostname } from "node:os";
import { isIP } from "node:net";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  type CertificateAuthority,
  issueEtcdCertificate,
  issueServerCertificate,
  loadOrCreateCa,
  readLeaf,
  renewAt,
  writeLeaf,
} from "../../pkg/pki/index.js";
import type { TlsSettings } from "./http.js";

export const SERVER_CERT_TTL_SECONDS = 90 * 24 * 3600;
/** etcd's serving certificate and the servers' etcd identity: a year, renewed by running init again. */
export const ETCD_CERT_TTL_SECONDS = 365 * 24 * 3600;

export interface ServerTlsOptions {
  pkiDir: string;
  /** This server's name: its certificate says CN=server:<name>. */
  name: string;
  /** The host it listens on: an IP (other than 0.0.0.0 or ::) goes into the certificate. */
  listenHost: string;
  /** More DNS names or IPs clients dial it by (tls-names). */
  names: readonly string[];
  signal?: AbortSignal;
}

/** What goes into the certificate: the configured names, this host's, and loopback. */
export function certificateNames(listenHost: string, names: readonly string[]): { dnsNames: string[]; ipAddresses: string[] } {
  const all = new Set<string>(["localhost", "127.0.0.1", "::1", hostname().toLowerCase(), ...names.map((n) => n.toLowerCase())]);
  if (isIP(listenHost) && listenHost !== "0.0.0.0" && listenHost !== "::") all.add(listenHost);
  else if (listenHost && !isIP(listenHost)) all.add(listenHost.toLowerCase());
  const list = [...all].filter((n) => n !== "");
  return { dnsNames: list.filter((n) => isIP(n) === 0).sort(), ipAddresses: list.filter((n) => isIP(n) !== 0).sort() };
}

export async function serverTls(o: ServerTlsOptions): Promise<{ ca: CertificateAuthority; tls: TlsSettings }> {
  const ca = await loadOrCreateCa(o.pkiDir, o.signal ? { signal: o.signal } : {});
  const want = certificateNames(o.listenHost, o.names);
  let leaf = await readLeaf(o.pkiDir, "server");
  if (!leaf || !current(leaf.cert, ca, want)) {
    leaf = {
      ...(await issueServerCertificate(ca, { name: o.name, ...want, ttlSeconds: SERVER_CERT_TTL_SECONDS })),
      cert: undefined as never,
    };
    await writeLeaf(o.pkiDir, "server", leaf);
  }
  return { ca, tls: { keyPem: leaf.keyPem, certPem: leaf.certPem, caPem: ca.certPem } };
}

/** Signed by this CA, not due for renewal, and naming every name wanted. */
function current(
  cert: X509Certificate,
  ca: CertificateAuthority,
  want: { dnsNames: readonly string[]; ipAddresses: readonly string[] },
): boolean {
  if (!cert.verify(new X509Certificate(ca.certPem).publicKey)) return false;
  if (Date.now() >= renewAt(cert).getTime()) return false;
  const san = cert.subjectAltName ?? "";
  return want.dnsNames.every((d) => san.includes(`DNS:${d}`)) && want.ipAddresses.every((ip) => hasIp(san, ip));
}

function hasIp(san: string, ip: string): boolean {
  // Node prints IPv6 SANs expanded and upper-cased ("IP Address:0:0:0:0:0:0:0:1").
  if (ip === "::1") return /IP Address:(0:0:0:0:0:0:0:1|::1)\b/i.test(san);
  return san.includes(`IP Address:${ip}`);
}

export interface EtcdPki {
  /** pki-dir/etcd: ca.crt, etcd-server.crt/.key, hypervisor-server.crt/.key. */
  dir: string;
  /** The files issued now (a pair still current is kept). */
  issued: string[];
}

/**
 * The cluster CA (made if missing) and, in pki-dir/etcd, what etcd needs to serve TLS with
 * client-certificate auth from it (scripts/start-etcd.sh takes that directory): a copy of ca.crt,
 * etcd's certificate (etcd-server: loopback, this host, and the hosts of `etcdHosts`, the
 * etcd-endpoints servers dial), and the servers' etcd identity (hypervisor-server: the CN is the
 * etcd user). Keys 0600 in a 0700 directory; etcd's key is for the etcd process only.
 */
export async function initEtcdPki(pkiDir: string, etcdHosts: readonly string[]): Promise<EtcdPki> {
  const ca = await loadOrCreateCa(pkiDir);
  const dir = join(pkiDir, "etcd");
  const issued: string[] = [];
  const pairs = [
    ["etcd-server", "etcd", certificateNames("", etcdHosts)],
    ["hypervisor-server", "hypervisor-server", { dnsNames: [], ipAddresses: [] }],
  ] as const;
  for (const [base, commonName, names] of pairs) {
    const have = await readLeaf(dir, base);
    if (have && current(have.cert, ca, names) && have.cert.subject === `CN=${commonName}`) continue;
    await writeLeaf(dir, base, await issueEtcdCertificate(ca, { commonName, ...names, ttlSeconds: ETCD_CERT_TTL_SECONDS }));
    issued.push(`${base}.crt`, `${base}.key`);
  }
  await writeFile(join(dir, "ca.crt"), ca.certPem, { mode: 0o644 });
  return { dir, issued };
}
