/*
 * Renewal of the node's certificate before it lapses, as kubelet does: at two thirds of its life
 * a new key and CSR, sent over mutual TLS with the certificate the node has, and the new pair
 * written in its place. The key never leaves the node; only a node still bound (not revoked) and
 * presenting its current or previous certificate gets a new one.
 *
 *   sleep until renewAt(cert) ──► key + CSR ──► RenewCertificate (mTLS: current cert; server pinned
 *        ▲                                       to the cluster CA and a server identity)
 *        │   ok: write node.key/.crt, onRenewed ─┘
 *        │   (each server of the list in turn, the last one that answered first)
 *        └── none reachable: retry in a tenth of what is left (1 s to 30 s)
 *            refused (revoked, not its certificate): stop, and say it must join again
 */
import { hostRef, splitRef } from "../../pkg/cluster/state/index.js";
import { X509Certificate } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { httpsAgent } from "../../pkg/httpclient/index.js";
import { IdentityService } from "../../api/gen/hypervisor/v1/identity_pb.js";
import { AgentSupportService } from "../../api/gen/hypervisor/v1/agent_pb.js";
import type { KnownInstance } from "./orphans.js";
import type { Logger } from "../../pkg/log/index.js";
import { generateKeyAndCsr, renewAt, writeLeaf } from "../../pkg/pki/index.js";
import { type NodeCredentials, serverOnly } from "./join.js";
import { ServerList } from "./servers.js";

export interface RenewerOptions {
  /** The server's URL, or several: the one that answered last, then the others. */
  server: string | readonly string[];
  dir: string;
  node: string;
  log: Logger;
  /** Told of every new certificate (a TLS listener reloads it). */
  onRenewed?: (creds: NodeCredentials) => void;
}

export class CertRenewer {
  /** How many renewals succeeded (tests and metrics). */
  renewals = 0;
  /** Set when the server refused for good (revoked): the loop has ended. */
  refused: string | undefined;

  private readonly servers: ServerList;

  constructor(
    private creds: NodeCredentials,
    private readonly opts: RenewerOptions,
  ) {
    this.servers = serverList(opts.server);
  }

  get current(): NodeCredentials {
    return this.creds;
  }

  /** Renews at two thirds of each certificate's life until `signal` aborts or the server refuses. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      // At least a second apart, whatever the certificate says: never a tight loop of renewals.
      const wait = Math.max(renewAt(this.creds.cert).getTime() - Date.now(), this.renewals > 0 ? 1000 : 0);
      if (wait > 0 && !(await pause(wait, signal))) return;
      try {
        await this.renewOnce(signal);
      } catch (e) {
        if (signal.aborted) return;
        const err = ConnectError.from(e);
        if (err.code === Code.PermissionDenied || err.code === Code.Unauthenticated) {
          this.refused = err.rawMessage;
          this.opts.log.error({ err: err.rawMessage }, "certificate renewal refused: this node must join again with a new token");
          return;
        }
        const left = Date.parse(this.creds.cert.validTo) - Date.now();
        const retry = Math.min(30_000, Math.max(1000, left / 10));
        this.opts.log.warn(
          { err: err.rawMessage, retryMs: Math.round(retry), validTo: this.creds.cert.validTo },
          "certificate renewal failed; retrying",
        );
        if (!(await pause(retry, signal))) return;
      }
    }
  }

  /** One renewal, now. */
  async renewOnce(signal?: AbortSignal): Promise<NodeCredentials> {
    const { keyPem, csrPem } = await generateKeyAndCsr(`node:${this.opts.node}`);
    // Its own sockets, gone after the call: the next renewal presents the next certificate.
    const agent = httpsAgent();
    const res = await this.servers
      .call((baseUrl) => {
        const transport = createConnectTransport({
          baseUrl,
          httpVersion: "1.1",
          nodeOptions: {
            ca: this.creds.caPem,
            cert: this.creds.certPem,
            key: this.creds.keyPem,
            checkServerIdentity: serverOnly,
            agent,
          },
        });
        return createClient(IdentityService, transport).renewCertificate({ csrPem }, signal ? { signal } : {});
      }, signal)
      .finally(() => agent.destroy());
    const cert = new X509Certificate(res.certPem);
    if (!cert.verify(new X509Certificate(this.creds.caPem).publicKey))
      throw new Error("the renewed certificate is not from the cluster CA");
    await writeLeaf(this.opts.dir, "node", { keyPem, certPem: res.certPem });
    this.creds = { keyPem, certPem: res.certPem, caPem: this.creds.caPem, cert };
    this.renewals++;
    this.opts.log.info({ validTo: cert.validTo, serial: cert.serialNumber, server: this.servers.current }, "node certificate renewed");
    this.opts.onRenewed?.(this.creds);
    return this.creds;
  }
}

/** Sleeps; false when the signal aborted it. */
async function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  try {
    await sleep(ms, undefined, { signal });
    return true;
  } catch {
    return false;
  }
}

/**
 * The agent's `lookup` through a server (AgentSupportService), for a node whose etcd role cannot
 * read instances/: mutual TLS with the node's current certificate, to a server of its CA. An error
 * (no server reachable) is thrown: the reconciler retries, and decides nothing meanwhile.
 */
export function lookupThroughServer(
  server: string | readonly string[],
  creds: () => NodeCredentials,
): (name: string, signal: AbortSignal) => Promise<KnownInstance | undefined> {
  const servers = serverList(server);
  const agent = httpsAgent();
  return async (name, signal) => {
    const c = creds();
    const r = await servers.call((baseUrl) => {
      const transport = createConnectTransport({
        baseUrl,
        httpVersion: "1.1",
        nodeOptions: { ca: c.caPem, cert: c.certPem, key: c.keyPem, checkServerIdentity: serverOnly, agent },
      });
      // `name` is the instance's name on this node: the server knows it by project and name.
      return createClient(AgentSupportService, transport).lookupInstance(splitRef(hostRef(name)), { signal });
    }, signal);
    return r.found ? { uid: r.uid, node: r.node, deleting: r.deleting, ephemeralDisks: r.ephemeralDisks } : undefined;
  };
}

const serverList = (server: string | readonly string[]) => new ServerList(typeof server === "string" ? [server] : server);
