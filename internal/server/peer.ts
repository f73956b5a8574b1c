/*
 * Who is on the other end of a request, as its TLS connection proved it: a node or a server of
 * this cluster (a client certificate the cluster CA signed), or nobody in particular. Handlers
 * that serve only nodes or servers ask here; the handshake itself never refuses an anonymous
 * client, so GetCA, Join and the web UI work without one.
 */
import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import { identityOf, type Identity } from "../../pkg/pki/index.js";

export const peerIdentity = createContextKey<Identity | undefined>(undefined, { description: "verified TLS client identity" });

/** The identity of a verified client certificate (DER), if it names one. */
export function identityOfPeer(der: Buffer | undefined): Identity | undefined {
  if (!der) return undefined;
  try {
    return identityOf(new Uint8Array(der));
  } catch {
    return undefined;
  }
}

export function peerOf(ctx: HandlerContext): Identity | undefined {
  return ctx.values.get(peerIdentity);
}
