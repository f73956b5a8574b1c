/*
 * Who a certificate says its holder is. The lead wires these into TLS checks; the rules:
 *
 *   kind     subject                                   SAN                      EKU
 *   server   CN=server:<name>, O=hypervisor:servers    its DNS names and IPs    serverAuth, clientAuth
 *   node     CN=node:<name>,   O=hypervisor:nodes      none                     serverAuth, clientAuth
 *   user     CN=user:<name>,   O=hypervisor:users      none                     clientAuth only
 *
 * Servers and nodes are TLS servers (the API; a node's AgentService) and TLS clients (of etcd, and
 * the node of the server), hence both usages. A user (a person or a script holding a certificate
 * from IssueUserCertificate) is only ever a client of the API: without serverAuth no TLS client
 * takes its certificate as a server's, and its rights are only what role bindings of user:<name>
 * give (never a node's or a server's: every check that wants those asks for that kind). What
 * tells the kinds apart is the subject, which only the CA sets: a CSR names itself, but
 * signNodeCsr and signUserCsr build the subject and every extension themselves.
 * A node or user certificate carries no DNS or IP name, so it can never pass a hostname check
 * meant for a server (Nomad's verify_server_hostname); a peer that must be a server or a given
 * node checks identityOf() of the verified certificate. The CN doubles as the etcd user name
 * (etcd's --client-cert-auth takes the CN), so a node's etcd role is `node:<name>`; no etcd user
 * is ever named `user:<name>`, so etcd refuses a user's certificate everything.
 *
 * identityOf does not verify the chain: call it on a certificate TLS has already verified
 * against the cluster CA.
 */
import { createHash } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { NAME_RE } from "../validation/index.js";
import "./keys.js";

export type IdentityKind = "server" | "node" | "user";

export interface Identity {
  kind: IdentityKind;
  name: string;
}

/** The subject organization of each kind (the O attribute; etcd ignores it, we check it). */
export const ORGANIZATION: Readonly<Record<IdentityKind, string>> = {
  server: "hypervisor:servers",
  node: "hypervisor:nodes",
  user: "hypervisor:users",
};

export const commonNameOf = (kind: IdentityKind, name: string): string => `${kind}:${name}`;

/** The subject distinguished name of an identity, as @peculiar/x509 takes it. */
export function subjectOf(id: Identity): x509.JsonName {
  return [{ CN: [commonNameOf(id.kind, id.name)] }, { O: [ORGANIZATION[id.kind]] }];
}

/** A certificate as PEM, DER bytes (a TLS peer certificate's `raw`), or parsed. */
export type CertificateInput = string | Uint8Array | x509.X509Certificate;

function parse(cert: CertificateInput): x509.X509Certificate | undefined {
  if (cert instanceof x509.X509Certificate) return cert;
  try {
    return new x509.X509Certificate(typeof cert === "string" ? cert : Buffer.from(cert));
  } catch {
    return undefined;
  }
}

/**
 * The identity in a certificate's subject, or undefined when it carries none of ours: exactly one
 * CN of the form <kind>:<name> with a valid name, and exactly one O, the one of that kind.
 */
export function identityOf(cert: CertificateInput): Identity | undefined {
  const c = parse(cert);
  if (!c) return undefined;
  // The parsed subject, not its string form, so an escaped ',' in a value cannot forge a field.
  const name = c.subjectName;
  const cns = name.getField("CN");
  const os = name.getField("O");
  if (cns.length !== 1 || os.length !== 1) return undefined;
  const m = /^(server|node|user):(.*)$/.exec(cns[0]!);
  if (!m) return undefined;
  const kind = m[1] as IdentityKind;
  const id = m[2]!;
  if (!NAME_RE.test(id) || os[0] !== ORGANIZATION[kind]) return undefined;
  return { kind, name: id };
}

/** Lowercase hex SHA-256 of the CA certificate's DER: what a join token pins (k3s' CA hash). */
export function caHash(caCertPem: string): string {
  const c = parse(caCertPem);
  if (!c) throw new Error("ca certificate: not a PEM certificate");
  return createHash("sha256").update(Buffer.from(c.rawData)).digest("hex");
}
