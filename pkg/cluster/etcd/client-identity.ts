/*
 * The client certificate of a store's etcd connections, replaceable while they run.
 *
 * A joined agent's etcd identity is its node certificate, which lives a day and is renewed at two
 * thirds of that. Connections already open keep working (etcd checks a certificate at the
 * handshake), but every later handshake must present the renewed one: after an etcd restart or a
 * network blip, an agent still holding the first certificate would be refused for good once it
 * lapsed. etcd3 builds its gRPC credentials once, from fixed PEM bytes; this replaces them with
 * gRPC's certificate-provider credentials, which take the newest certificate at each connect.
 *
 *   ClientIdentity(ca, cert, key) ──► credentials() ──► every etcd3 host of the client
 *        └── set(cert, key) on renewal ──► the next handshake presents it
 */
import { createSecureContext } from "node:tls";
import { experimental, type ChannelCredentials } from "@grpc/grpc-js";
import type { Etcd3 } from "etcd3";
import { StoreError } from "../store/index.js";

type CaListener = experimental.CaCertificateUpdateListener;
type IdentityListener = experimental.IdentityCertificateUpdateListener;

export class ClientIdentity implements experimental.CertificateProvider {
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();
  private identity: experimental.IdentityCertificateUpdate;

  constructor(
    private readonly ca: Buffer,
    cert: Buffer,
    key: Buffer,
  ) {
    this.identity = checked(cert, key);
  }

  /** The certificate and key the next handshake presents. Throws StoreError if they do not match. */
  set(cert: Buffer | string, key: Buffer | string): void {
    this.identity = checked(Buffer.from(cert), Buffer.from(key));
    for (const l of this.identityListeners) l(this.identity);
  }

  credentials(): ChannelCredentials {
    return experimental.createCertificateProviderChannelCredentials(this, this);
  }

  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    listener({ caCertificate: this.ca });
  }
  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }
  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    listener(this.identity);
  }
  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }
}

/** A certificate with a key that is not its own would fail every handshake: refuse it here. */
function checked(certificate: Buffer, privateKey: Buffer): experimental.IdentityCertificateUpdate {
  try {
    createSecureContext({ cert: certificate, key: privateKey });
  } catch (e) {
    throw new StoreError(`etcd client certificate: ${(e as Error).message}`);
  }
  return { certificate, privateKey };
}

/** What of etcd3's (1.x) client this reaches: the channel credentials of each host of its pool. */
interface Etcd3Internals {
  pool?: { hosts?: { channelCredentials?: unknown }[]; authenticator?: { credentials?: unknown } };
}

/**
 * Makes every connection `client` opens from now on present `identity`'s current certificate.
 * Call it right after constructing the client, before any call. Throws if etcd3's pool no longer
 * looks as expected (a dependency upgrade), rather than silently keeping the fixed certificate.
 */
export function useClientIdentity(client: Etcd3, identity: ClientIdentity): void {
  const pool = (client as unknown as Etcd3Internals).pool;
  if (!pool?.hosts?.length || !pool.hosts.every((h) => "channelCredentials" in h))
    throw new StoreError("etcd3's connection pool has changed shape: cannot install a renewable client certificate");
  const credentials = identity.credentials();
  for (const h of pool.hosts) h.channelCredentials = credentials;
  // Password authentication dials with the authenticator's own copy.
  if (pool.authenticator && "credentials" in pool.authenticator) pool.authenticator.credentials = credentials;
}
