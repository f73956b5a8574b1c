/*
 * Who is on the other end of a request, as its TLS connection proved it: a node or a server of
 * this cluster (a client certificate the cluster CA signed), or nobody in particular. Handlers
 * that serve only nodes or servers ask here; the handshake itself never refuses an anonymous
 * client, so GetCA, Join and the web UI work without one.
 */
import { X509Certificate } from "node:crypto";
import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import { identityOf, type Identity } from "../../pkg/pki/index.js";

/** Who the client certificate names, and its serial (hex, as node's X509Certificate prints it). */
export interface Peer extends Identity {
  serial: string;
}

export const peerIdentity = createContextKey<Peer | undefined>(undefined, { description: "verified TLS client identity" });

/** The identity of a verified client certificate (DER), if it names one. */
export function identityOfPeer(der: Buffer | undefined): Peer | undefined {
  if (!der) return undefined;
  try {
    const id = identityOf(new Uint8Array(der));
    return id && { ...id, serial: new X509Certificate(der).serialNumber };
  } catch {
    return undefined;
  }
}

export function peerOf(ctx: HandlerContext): Peer | undefined {
  return ctx.values.get(peerIdentity);
}
