/*
 * The agent's side of joining a cluster (k3s' join token, kubelet's TLS bootstrap): the CA is
 * fetched and checked against the hash the token pins before anything is sent, the key is made
 * here and never leaves the node, and the certificate for node:<name> comes back for a CSR.
 *
 *   <dir>/node.crt valid, same node? ──yes──► use it (renewal: renewAt, two thirds of its life)
 *        │no
 *   token parsed (HV10<ca hash>::<id>.<secret>) ──► GetCA (TLS, server unverified: only the CA is read)
 *        ──► sha256(CA) == token's hash? ──no──► JoinRefusedError: nothing else is sent
 *        ──► node secret (<dir>/node-secret, made once: binds the name to this agent)
 *        ──► key + CSR(CN=node:<name>) ──► Join over TLS verified against that CA, to a
 *            certificate naming a server (a node's certificate cannot pose as one)
 *        ──► <dir>/ca.crt, node.key, node.crt (0600, atomically)
 */
import { randomBytes, X509Certificate } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { join as joinPath } from "node:path";
import type { PeerCertificate } from "node:tls";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { httpsAgent } from "../../pkg/httpclient/index.js";
import { IdentityService } from "../../api/gen/hypervisor/v1/identity_pb.js";
import {
  caHash,
  generateKeyAndCsr,
  identityOf,
  parseJoinToken,
  readLeaf,
  readTextIfExists as readIfExists,
  writeLeaf,
  writePrivateFile as writePrivate,
  type KeyAndCertificate,
} from "../../pkg/pki/index.js";
import { ServerList, unreachable } from "./servers.js";
import type { Logger } from "../../pkg/log/index.js";

/** The join did not happen: the message says why, and nothing was written. */
export class JoinRefusedError extends Error {
  override name = "JoinRefusedError";
}

export interface NodeCredentials extends KeyAndCertificate {
  caPem: string;
  cert: X509Certificate;
}

export interface JoinOptions {
  /** The server's URL (https://host:port), or several: the first that can be reached. */
  server: string | readonly string[];
  /** The join token; needed only when the node has no certificate yet. */
  token: string;
  node: string;
  /** Where the node keeps its key, certificate, the CA and its node secret (0700). */
  dir: string;
  log: Logger;
  signal?: AbortSignal;
  /** Clock, for tests. */
  now?: () => Date;
}

/** The node's credentials: those it has (when still valid for this node), else from a join. */
export async function ensureCredentials(o: JoinOptions): Promise<NodeCredentials> {
  const have = await loadCredentials(o.dir, o.node, o.now?.() ?? new Date());
  if (have) return have;
  if (!o.token)
    throw new JoinRefusedError(`node ${o.node} has no certificate in ${o.dir}: give a join token (join-token) to join the cluster`);
  return join(o);
}

/** The credentials in `dir`, if they are there, name this node and have not expired. */
export async function loadCredentials(dir: string, node: string, now: Date): Promise<NodeCredentials | undefined> {
  const leaf = await readLeaf(dir, "node");
  const caPem = await readIfExists(joinPath(dir, "ca.crt"));
  if (!leaf || caPem === undefined) return undefined;
  const id = identityOf(leaf.certPem);
  if (id?.kind !== "node" || id.name !== node) return undefined;
  if (now.getTime() >= Date.parse(leaf.cert.validTo)) return undefined;
  return { ...leaf, caPem };
}

async function join(o: JoinOptions): Promise<NodeCredentials> {
  const token = parseJoinToken(o.token);
  const servers = new ServerList(typeof o.server === "string" ? [o.server] : o.server);
  try {
    return await servers.call((server) => joinAt(server, token, o), o.signal);
  } catch (e) {
    if (e instanceof JoinRefusedError || o.signal?.aborted) throw e;
    const err = ConnectError.from(e);
    throw new JoinRefusedError(
      `cannot reach ${servers.urls.length > 1 ? "any of the servers" : "the server"} (${servers.urls.join(", ")}): ${err.rawMessage}`,
    );
  }
}

async function joinAt(server: string, token: ReturnType<typeof parseJoinToken>, o: JoinOptions): Promise<NodeCredentials> {
  // The CA as this server presents it: read over TLS without trusting the server yet, and
  // believed only if it is the one the token pins.
  const unverified = createClient(IdentityService, transport(server, { rejectUnauthorized: false }));
  const { caPem } = await call(server, "GetCA", () => unverified.getCA({}, signalOpt(o.signal)));
  const got = caHash(caPem);
  if (got !== token.caHash)
    throw new JoinRefusedError(
      `the server at ${server} presents a CA (sha256 ${got}) that is not the one the join token pins (${token.caHash}): nothing was sent to it`,
    );
  await mkdir(o.dir, { recursive: true, mode: 0o700 });
  const secret = await nodeSecret(o.dir);
  const { keyPem, csrPem } = await generateKeyAndCsr(`node:${o.node}`);
  const client = createClient(IdentityService, transport(server, { ca: caPem, checkServerIdentity: serverOnly }));
  const res = await call(server, "Join", () =>
    client.join({ token: o.token, node: o.node, csrPem, nodeSecret: secret }, signalOpt(o.signal)),
  );
  const cert = new X509Certificate(res.certPem);
  const id = identityOf(res.certPem);
  if (id?.kind !== "node" || id.name !== o.node || !cert.verify(new X509Certificate(caPem).publicKey))
    throw new JoinRefusedError(`the server at ${server} answered with a certificate that is not node:${o.node}'s from its CA`);
  await writePrivate(o.dir, "ca.crt", caPem);
  await writeLeaf(o.dir, "node", { keyPem, certPem: res.certPem });
  o.log.info({ node: o.node, expires: cert.validTo }, "joined the cluster: certificate issued");
  return { keyPem, certPem: res.certPem, caPem, cert };
}

/**
 * TLS options for a client of a cluster server: the CA given (and only it), and a certificate
 * that must name a server of this cluster, not a node (Nomad's verify_server_hostname).
 */
export function serverOnly(host: string, cert: PeerCertificate): Error | undefined {
  const id = cert.raw ? identityOf(new Uint8Array(cert.raw)) : undefined;
  if (id?.kind !== "server")
    return new Error(`the certificate of ${host} does not name a server of this cluster (${String(cert.subject?.CN ?? "no CN")})`);
  return undefined;
}

function transport(baseUrl: string, tls: { ca?: string; rejectUnauthorized?: boolean; checkServerIdentity?: typeof serverOnly }) {
  if (!baseUrl.startsWith("https://"))
    throw new JoinRefusedError(`server: ${JSON.stringify(baseUrl)} must be an https:// URL: a join never crosses the network in cleartext`);
  return createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions: { ...tls, agent: joinAgent } });
}

/** Sockets with TCP_NODELAY (pkg/httpclient): a join is a few calls, each would wait 40 ms. */
const joinAgent = httpsAgent();

const signalOpt = (signal: AbortSignal | undefined) => (signal ? { signal } : {});

/**
 * A call to the server; its refusal becomes a JoinRefusedError with the server's words. A server
 * that cannot be reached throws as it is: the next one is tried.
 */
async function call<T>(server: string, what: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (unreachable(e)) throw e;
    throw new JoinRefusedError(`${what} at ${server}: ${ConnectError.from(e).rawMessage}`);
  }
}

/** The node's binding secret: made once (32 random bytes), kept 0600, sent with every join. */
async function nodeSecret(dir: string): Promise<string> {
  const have = (await readIfExists(joinPath(dir, "node-secret")))?.trim();
  if (have) return have;
  const secret = randomBytes(32).toString("base64url");
  await writePrivate(dir, "node-secret", secret);
  return secret;
}
