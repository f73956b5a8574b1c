/*
 * IdentityService: the cluster CA to whoever asks, node certificates in exchange for join
 * tokens, and the tokens themselves for operators. The decisions live in pkg/pki (checkJoin,
 * signNodeCsr); the store access in pkg/cluster/state (identity.ts).
 *
 *   agent                                          server
 *     │ GetCA ───────────────────────────────────────► ca_pem
 *     │ sha256(ca) == token's hash? else stop: nothing else is sent to a server of another CA
 *     │ key + CSR(CN=node:<name>) made locally
 *     │ Join(token, node, csr, node_secret) ─────────► parse token, check its CA hash
 *     │                                                read token ─► checkJoin (secret first)
 *     │                                                read binding ─► same node secret, or none yet
 *     │                                                sign the CSR (the CA sets subject, usages, life)
 *     │                                                txn: token unchanged (mod) and binding
 *     │                                                unchanged/absent ─► used+1, binding written
 *     │ ◄──────────────────────────────────────────── cert_pem, ca_pem, expire_time   (or re-read: retry)
 *
 * Codes: a malformed field is InvalidArgument naming it; a token that is not a valid credential
 * (unknown, wrong secret, revoked, expired, used up, another CA) is Unauthenticated; a valid token
 * scoped to another node is PermissionDenied; a name bound to another agent's secret is
 * AlreadyExists. Unknown id and wrong secret answer alike, so ids cannot be probed.
 */
import { X509Certificate } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  type JoinToken,
  IdentityService,
  JoinTokenRecordSchema,
  JoinTokenSchema,
  type JoinTokenRecord,
  NodeBindingSchema,
} from "../../api/gen/hypervisor/v1/identity_pb.js";
import type { Store } from "../../pkg/cluster/store/index.js";
import type { Logger } from "../../pkg/log/index.js";
import {
  caHash,
  type CertificateAuthority,
  checkJoin,
  CsrRejectedError,
  formatJoinToken,
  hashSecret,
  JoinTokenFormatError,
  MAX_CSR_PEM_BYTES,
  newJoinToken,
  parseJoinToken,
  secretMatches,
  signNodeCsr,
  TOKEN_ID_RE,
} from "../../pkg/pki/index.js";
import { checkName, checkText, LIMITS, show } from "../../pkg/validation/index.js";
import {
  codecs,
  ConflictError,
  keys,
  update,
  commitJoin,
  createJoinToken,
  listJoinTokens,
  readJoinToken,
  readNodeBinding,
  updateJoinToken,
} from "../../pkg/cluster/state/index.js";
import { invalid, refuse } from "./validate.js";
import { peerOf } from "./peer.js";

export interface IdentityServiceOptions {
  store: Store;
  ca: CertificateAuthority;
  /** After a join: give the node what it needs beyond its certificate (its etcd role). */
  onJoin?: (node: string) => Promise<void>;
  /** After RevokeNode removed a binding: take the rest away (its etcd role). */
  onRevoke?: (node: string) => Promise<void>;
  /** Lifetime of a node certificate from Join (default 24 h); agents renew at two thirds of it. */
  nodeCertTtlSeconds?: number;
  /**
   * Who may mint, list and revoke join tokens and revoke nodes: the reason a caller may not, or
   * undefined. Omitted: anyone who reaches the service (tests of the service alone).
   */
  operator?: (hctx: HandlerContext) => string | undefined;
  /** Clock for expiry decisions and certificate validity; tests fix it. */
  now?: () => Date;
  log?: Logger;
}

export const DEFAULT_NODE_CERT_TTL_SECONDS = 24 * 3600;
export const DEFAULT_JOIN_TOKEN_TTL_SECONDS = 24 * 3600;
/** The agent's node secret: what it generates is 43 base64url characters (32 random bytes). */
export const NODE_SECRET_RE = /^[A-Za-z0-9_-]{32,256}$/;
// Optimistic writes retry on contention this many times before answering Aborted.
const ATTEMPTS = 10;

const unauthenticated = (message: string) => new ConnectError(`token: ${message}`, Code.Unauthenticated);

function view(r: JoinTokenRecord): JoinToken {
  return create(JoinTokenSchema, {
    id: r.id,
    node: r.node,
    createTime: r.createTime,
    expireTime: r.expireTime,
    maxUses: r.maxUses,
    used: r.used,
    revoked: r.revoked,
    description: r.description,
  });
}

export function identityService(opts: IdentityServiceOptions): ServiceImpl<typeof IdentityService> {
  const { store, ca } = opts;
  const now = opts.now ?? (() => new Date());
  const certTtl = opts.nodeCertTtlSeconds ?? DEFAULT_NODE_CERT_TTL_SECONDS;
  const ourHash = caHash(ca.certPem);
  /** Refuses a caller the operator methods are not for (opts.operator says why). */
  const operator = (hctx: HandlerContext) => {
    const why = opts.operator?.(hctx);
    if (why) throw new ConnectError(why, Code.PermissionDenied);
  };

  return {
    getCA() {
      return { caPem: ca.certPem };
    },

    async join(req, hctx) {
      const signal = hctx.signal;
      let token;
      try {
        token = parseJoinToken(req.token);
      } catch (e) {
        if (e instanceof JoinTokenFormatError) throw invalid("token", e.message);
        throw e;
      }
      refuse(checkName("node", req.node));
      if (!NODE_SECRET_RE.test(req.nodeSecret)) {
        // Never the value: it is a secret, and so may be whatever was pasted in its place.
        throw invalid(
          "node_secret",
          `must be 32 to 256 characters of letters, digits, '-' and '_' (got ${req.nodeSecret.length} characters)`,
        );
      }
      if (req.csrPem === "") throw invalid("csr_pem", "is required");
      if (req.csrPem.length > MAX_CSR_PEM_BYTES)
        throw invalid("csr_pem", `is ${req.csrPem.length} bytes; at most ${MAX_CSR_PEM_BYTES} allowed`);
      if (token.caHash !== ourHash) throw unauthenticated(`pins ca hash ${token.caHash}; this cluster's ca is ${ourHash}`);

      let certPem: string | undefined;
      for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
        const at = now();
        const read = await readJoinToken(store, token.id, { signal });
        const decision = checkJoin(read?.value, { now: at, node: req.node, secret: token.secret });
        if (!decision.ok || !read) {
          const id = show(token.id);
          switch (decision.ok ? "unknown" : decision.reason) {
            case "revoked":
              throw unauthenticated(`join token ${id} is revoked`);
            case "expired":
              throw unauthenticated(
                `join token ${id} expired${read?.value.expireTime ? ` at ${timestampDate(read.value.expireTime).toISOString()}` : ""}`,
              );
            case "used-up":
              throw unauthenticated(`join token ${id} is used up (${read?.value.used} of ${read?.value.maxUses} joins)`);
            case "wrong-node":
              throw new ConnectError(
                `node: join token ${id} joins only node ${show(read?.value.node)}, not ${show(req.node)}`,
                Code.PermissionDenied,
              );
            default:
              throw unauthenticated(`join token ${id} is unknown or its secret does not match`);
          }
        }
        const bound = await readNodeBinding(store, req.node, { signal });
        if (bound && !secretMatches(req.nodeSecret, bound.value.secretSha256)) {
          throw new ConnectError(
            `node: ${show(req.node)} is already joined by another agent (its node_secret does not match)`,
            Code.AlreadyExists,
          );
        }
        // Signed once the caller has shown a valid token: no signing work for anonymous requests.
        if (certPem === undefined) {
          try {
            certPem = await signNodeCsr(ca, req.csrPem, { node: req.node, ttlSeconds: certTtl, now: at });
          } catch (e) {
            if (e instanceof CsrRejectedError) throw invalid("csr_pem", e.message);
            throw e;
          }
        }
        const used = create(JoinTokenRecordSchema, { ...read.value, used: read.value.used + 1 });
        const serial = new X509Certificate(certPem).serialNumber;
        const next = bound
          ? create(NodeBindingSchema, { ...bound.value, certSerial: serial, previousCertSerial: bound.value.certSerial })
          : create(NodeBindingSchema, {
              node: req.node,
              secretSha256: hashSecret(req.nodeSecret),
              createTime: timestampFromDate(at),
              tokenId: token.id,
              certSerial: serial,
            });
        if (await commitJoin(store, read, used, { read: bound, next }, { signal })) {
          await opts.onJoin?.(req.node);
          opts.log?.info({ node: req.node, token: token.id, firstJoin: !bound }, "node joined");
          return { certPem, caPem: ca.certPem, expireTime: timestampFromDate(new Date(new X509Certificate(certPem).validTo)) };
        }
      }
      throw new ConnectError(`token: join token ${show(token.id)} is being used concurrently; try again`, Code.Aborted);
    },

    async createJoinToken(req, hctx) {
      operator(hctx);
      if (req.node !== "") refuse(checkName("node", req.node));
      if (req.ttlSeconds > LIMITS.maxJoinTokenTtlSeconds) {
        throw invalid("ttl_seconds", `${req.ttlSeconds} is more than the maximum ${LIMITS.maxJoinTokenTtlSeconds} (one year)`);
      }
      if (req.maxUses > LIMITS.maxJoinTokenUses)
        throw invalid("max_uses", `${req.maxUses} is more than the maximum ${LIMITS.maxJoinTokenUses}`);
      refuse(checkText("description", req.description, LIMITS.maxDescriptionBytes));
      const at = now();
      const ttl = req.ttlSeconds === 0 ? DEFAULT_JOIN_TOKEN_TTL_SECONDS : req.ttlSeconds;
      for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
        const t = newJoinToken(ourHash);
        const record = create(JoinTokenRecordSchema, {
          id: t.id,
          secretSha256: hashSecret(t.secret),
          node: req.node,
          createTime: timestampFromDate(at),
          expireTime: timestampFromMs(at.getTime() + ttl * 1000),
          maxUses: req.maxUses,
          description: req.description,
        });
        // An id already taken (1 in 2 billion per existing token) draws another.
        if (await createJoinToken(store, record, { signal: hctx.signal })) {
          opts.log?.info({ token: t.id, node: req.node || undefined, maxUses: req.maxUses, ttlSeconds: ttl }, "join token created");
          return { token: formatJoinToken(t), joinToken: view(record) };
        }
      }
      throw new ConnectError("could not draw an unused join token id; try again", Code.Aborted);
    },

    async renewCertificate(req, hctx) {
      const peer = peerOf(hctx);
      if (peer?.kind !== "node")
        throw new ConnectError("renewal needs the node's current certificate, presented over mutual TLS", Code.Unauthenticated);
      if (req.csrPem === "") throw invalid("csr_pem", "is required");
      if (req.csrPem.length > MAX_CSR_PEM_BYTES)
        throw invalid("csr_pem", `is ${req.csrPem.length} bytes; at most ${MAX_CSR_PEM_BYTES} allowed`);
      let certPem: string;
      try {
        certPem = await signNodeCsr(ca, req.csrPem, { node: peer.name, ttlSeconds: certTtl, now: now() });
      } catch (e) {
        if (e instanceof CsrRejectedError) throw invalid("csr_pem", e.message);
        throw e;
      }
      const serial = new X509Certificate(certPem).serialNumber;
      try {
        await update(
          store,
          keys.nodeBinding(peer.name),
          codecs.nodeBinding,
          ({ value }) => {
            if (!value)
              throw new ConnectError(`node ${peer.name} is revoked (or never joined): join it again with a token`, Code.PermissionDenied);
            if (peer.serial !== value.certSerial && peer.serial !== value.previousCertSerial)
              throw new ConnectError(
                `the certificate presented (serial ${peer.serial}) is not one of node ${peer.name}'s last two: join it again with a token`,
                Code.PermissionDenied,
              );
            return { value: create(NodeBindingSchema, { ...value, certSerial: serial, previousCertSerial: peer.serial }) };
          },
          { signal: hctx.signal },
        );
      } catch (e) {
        if (e instanceof ConflictError) throw new ConnectError(`node ${peer.name} is renewing concurrently; try again`, Code.Aborted);
        throw e;
      }
      opts.log?.info({ node: peer.name, serial }, "node certificate renewed");
      return { certPem, expireTime: timestampFromDate(new Date(new X509Certificate(certPem).validTo)) };
    },

    async revokeNode(req, hctx) {
      operator(hctx);
      refuse(checkName("node", req.node));
      const res = await update(
        store,
        keys.nodeBinding(req.node),
        codecs.nodeBinding,
        ({ value }) => (value ? { value: null } : undefined),
        {
          signal: hctx.signal,
        },
      );
      await opts.onRevoke?.(req.node);
      if (res.written) opts.log?.warn({ node: req.node }, "node revoked: no renewal, its certificate lapses within node-cert-ttl");
      return { revoked: res.written };
    },

    async listJoinTokens(_req, hctx) {
      operator(hctx);
      const records = await listJoinTokens(store, { signal: hctx.signal });
      return { joinTokens: records.map(view) };
    },

    async revokeJoinToken(req, hctx) {
      operator(hctx);
      if (!TOKEN_ID_RE.test(req.id)) throw invalid("id", `${show(req.id)} is not a join token id (6 lowercase letters or digits)`);
      for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
        const read = await readJoinToken(store, req.id, { signal: hctx.signal });
        if (!read) throw new ConnectError(`join token ${show(req.id)} not found`, Code.NotFound);
        if (read.value.revoked) return { joinToken: view(read.value) };
        const next = create(JoinTokenRecordSchema, { ...read.value, revoked: true });
        if (await updateJoinToken(store, read, next, { signal: hctx.signal })) {
          opts.log?.info({ token: req.id }, "join token revoked");
          return { joinToken: view(next) };
        }
      }
      throw new ConnectError(`join token ${show(req.id)} is being changed concurrently; try again`, Code.Aborted);
    },
  };
}
