/*
 * Who is on the other end of a request, as its TLS connection proved it: a node, a server or a
 * user of this cluster (a client certificate the cluster CA signed), or nobody in particular.
 * Handlers that serve only nodes or servers ask here, by kind (a user's certificate is neither);
 * the handshake itself never refuses an anonymous client, so GetCA, Join and the web UI work
 * without one.
 */
import { X509Certificate } from "node:crypto";
import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import { identityOf, type Identity } from "../../pkg/pki/index.js";
import { isLoopback } from "./config.js";

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

/**
 * Why a caller may not use the operator methods of cluster identity (minting join tokens, revoking
 * nodes), or undefined: until users and roles exist (the access issue), only a client on the
 * server's own machine (loopback, as k3s' `token create` reads the server's files) or another
 * server of the cluster may, not whoever reaches the API from the network.
 */
export function operatorRefusal(address: string, peer: Peer | undefined): string | undefined {
  if (peer?.kind === "server") return undefined;
  if (isLoopback(address)) return undefined;
  return `join tokens and node revocation are managed from a server's own machine (loopback) or by another server; ${address} is neither (users and roles come with the access issue)`;
}

export function peerOf(ctx: HandlerContext): Peer | undefined {
  return ctx.values.get(peerIdentity);
}
