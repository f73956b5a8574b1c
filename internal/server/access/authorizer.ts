/*
 * Who calls, and may they: every RPC passes through one interceptor, and /metrics through the
 * same decision.
 *
 *   Authorization: Bearer hvt_<id>.<secret> ──► apitokens/<id> (informer, else the store)
 *        secret's SHA-256 matches, not revoked, not expired ──► user, roles ──► rights
 *   no header, a verified cluster certificate ──► server:<name> (every right) or node:<name> (none)
 *   neither ──► anonymous: public calls only
 *
 *   RULES[<Service>/<Method>] ──► public | authenticated | node | servers | right ──► run or refuse
 *
 * A malformed, unknown, revoked or expired token is unauthenticated (even on a public call: a
 * client that sent credentials wants to know they are bad); a caller without the right is
 * permission_denied, naming the right, the method and the caller's roles.
 */
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import type { ApiTokenRecord } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { codecs, keys } from "../../../pkg/cluster/state/index.js";
import type { Store } from "../../../pkg/cluster/store/index.js";
import { secretMatches } from "../../../pkg/pki/index.js";
import type { Informer } from "../informer.js";
import { peerIdentity, type Peer } from "../peer.js";
import { ALL_RIGHTS, rightsOf, type Right } from "./rights.js";
import { RULES, type Rule } from "./rules.js";
import { parseToken } from "./tokens.js";

export interface Caller {
  kind: "user" | "server" | "node" | "anonymous";
  /** "admin" (a token's user), "server:<name>", "node:<name>", or "" (anonymous). */
  user: string;
  by: "token" | "certificate" | "none";
  tokenId: string;
  roles: readonly string[];
  rights: ReadonlySet<Right>;
}

export const ANONYMOUS: Caller = { kind: "anonymous", user: "", by: "none", tokenId: "", roles: [], rights: new Set() };

/** The caller of the request being served (set by the interceptor before any handler runs). */
export const callerKey = createContextKey<Caller>(ANONYMOUS, { description: "the authenticated caller" });

export type Decision = { allowed: true } | { allowed: false; code: Code; message: string };

export class Authorizer {
  constructor(
    private readonly store: Store,
    /** The servers' copy of apitokens/; a miss (a token made a moment ago elsewhere) reads the store. */
    private readonly tokens?: Pick<Informer<ApiTokenRecord>, "get">,
    private readonly now: () => number = Date.now,
  ) {}

  /** The caller of a request with this Authorization header and this verified client certificate. */
  async authenticate(authorization: string | null | undefined, peer: Peer | undefined, signal?: AbortSignal): Promise<Caller> {
    if (authorization) return this.byToken(authorization, signal);
    if (peer?.kind === "server")
      return { kind: "server", user: `server:${peer.name}`, by: "certificate", tokenId: "", roles: ["admin"], rights: new Set(ALL_RIGHTS) };
    if (peer?.kind === "node")
      return { kind: "node", user: `node:${peer.name}`, by: "certificate", tokenId: "", roles: [], rights: new Set() };
    return ANONYMOUS;
  }

  private async byToken(authorization: string, signal?: AbortSignal): Promise<Caller> {
    const m = /^Bearer +(\S+)$/.exec(authorization);
    if (!m) throw new ConnectError('authorization: expected "Bearer <token>"', Code.Unauthenticated);
    const parsed = parseToken(m[1]!);
    if (!parsed) throw new ConnectError("authorization: the token is malformed (expected hvt_<id>.<secret>)", Code.Unauthenticated);
    const record = this.tokens?.get(keys.apiToken(parsed.id))?.value ?? (await this.read(parsed.id, signal));
    // Unknown and wrong secret read the same: an id alone tells nothing about a token's secret.
    if (!record || !secretMatches(parsed.secret, record.secretSha256))
      throw new ConnectError(`token ${parsed.id}: not a valid token of this cluster`, Code.Unauthenticated);
    if (record.revoked) throw new ConnectError(`token ${parsed.id}: revoked`, Code.Unauthenticated);
    const expires = record.expireTime ? Number(record.expireTime.seconds) * 1000 + record.expireTime.nanos / 1e6 : 0;
    if (expires <= this.now()) throw new ConnectError(`token ${parsed.id}: expired`, Code.Unauthenticated);
    return { kind: "user", user: record.user, by: "token", tokenId: record.id, roles: record.roles, rights: rightsOf(record.roles) };
  }

  private async read(id: string, signal?: AbortSignal): Promise<ApiTokenRecord | undefined> {
    const kv = await this.store.get(keys.apiToken(id), signal ? { signal } : undefined);
    return kv ? codecs.apiToken.decode(kv.value) : undefined;
  }

  /** May `caller` do what `rule` guards? `what` names the call in the refusal. */
  decide(caller: Caller, rule: Rule | undefined, what: string): Decision {
    if (!rule) return refuse(Code.PermissionDenied, `${what}: no access rule (refused by default)`);
    switch (rule.kind) {
      case "public":
        return { allowed: true };
      case "authenticated":
        return caller.kind === "anonymous" ? unauthenticated(what) : { allowed: true };
      case "node":
        return caller.kind === "node" ? { allowed: true } : refuse(Code.PermissionDenied, `${what}: for nodes only (a node certificate)`);
      case "servers":
        return caller.kind === "server" ? { allowed: true } : refuse(Code.PermissionDenied, `${what}: for servers only`);
      case "right":
        if (caller.kind === "anonymous") return unauthenticated(what);
        if (caller.rights.has(rule.right)) return { allowed: true };
        return refuse(
          Code.PermissionDenied,
          `${what}: ${caller.user} may not ${rule.right} (${caller.roles.length > 0 ? `roles: ${caller.roles.join(", ")}` : "no role"})`,
        );
    }
  }

  /** The interceptor every RPC of the server passes through. */
  interceptor(): Interceptor {
    return (next) => async (req) => {
      const what = `${req.service.typeName}/${req.method.name}`;
      const caller = await this.authenticate(req.header.get("authorization"), req.contextValues.get(peerIdentity), req.signal);
      const d = this.decide(caller, RULES.get(what), req.method.name);
      if (!d.allowed) throw new ConnectError(d.message, d.code);
      req.contextValues.set(callerKey, caller);
      return next(req);
    };
  }
}

const refuse = (code: Code, message: string): Decision => ({ allowed: false, code, message });
const unauthenticated = (what: string): Decision =>
  refuse(Code.Unauthenticated, `${what}: credentials required (a token: Authorization: Bearer hvt_...)`);
