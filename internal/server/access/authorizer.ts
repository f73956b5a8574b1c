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
import { toJson } from "@bufbuild/protobuf";
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
import { redactedJson, type AuditLog } from "./audit.js";
import { clientAddress } from "../client-limits.js";

export interface Caller {
  kind: "user" | "server" | "node" | "anonymous";
  /** "admin" (a token's user), "server:<name>", "node:<name>", or "" (anonymous). */
  user: string;
  by: "token" | "certificate" | "none";
  tokenId: string;
  roles: readonly string[];
  rights: ReadonlySet<Right>;
}

/** Store reads a second for tokens the server's copy lacks (see Authorizer.mayRead). */
export const STORE_READS_PER_SECOND = 20;

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
    const record = this.tokens?.get(keys.apiToken(parsed.id))?.value ?? (this.mayRead() ? await this.read(parsed.id, signal) : undefined);
    // Unknown and wrong secret read the same: an id alone tells nothing about a token's secret.
    if (!record || !secretMatches(parsed.secret, record.secretSha256))
      throw new ConnectError(`token ${parsed.id}: not a valid token of this cluster`, Code.Unauthenticated);
    if (record.revoked) throw new ConnectError(`token ${parsed.id}: revoked`, Code.Unauthenticated);
    const expires = record.expireTime ? Number(record.expireTime.seconds) * 1000 + record.expireTime.nanos / 1e6 : 0;
    if (expires <= this.now()) throw new ConnectError(`token ${parsed.id}: expired`, Code.Unauthenticated);
    return { kind: "user", user: record.user, by: "token", tokenId: record.id, roles: record.roles, rights: rightsOf(record.roles) };
  }

  /**
   * A token this server's copy lacks is read from the store (made a moment ago on another
   * server), but at most STORE_READS_PER_SECOND a second (burst as many): made-up tokens, each
   * with a new id, would otherwise cost a store round trip each. Past that, an unknown token is
   * refused as unknown; its maker retries once the copy has it (milliseconds).
   */
  private mayRead(): boolean {
    const now = this.now();
    this.readBudget = Math.min(STORE_READS_PER_SECOND, this.readBudget + ((now - this.budgetAt) / 1000) * STORE_READS_PER_SECOND);
    this.budgetAt = now;
    if (this.readBudget < 1) return false;
    this.readBudget -= 1;
    return true;
  }

  private readBudget = STORE_READS_PER_SECOND;
  private budgetAt = 0;

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

  /**
   * The interceptor every RPC of the server passes through; with `audit`, refusals and every call
   * that changes something (or opens a console or a log stream, or logs in) become audit events,
   * and such calls are refused while the audit file cannot be written (audit.ts).
   */
  interceptor(audit?: AuditLog): Interceptor {
    return (next) => async (req) => {
      const what = `${req.service.typeName}/${req.method.name}`;
      const rule = RULES.get(what);
      const on = audit && audit.level !== "none" ? audit : undefined;
      // What every event of this call says, made only when there is one (not for reads).
      const base = () => ({
        sourceAddress: req.contextValues.get(clientAddress),
        method: `${req.service.name}/${req.method.name}`,
        verb: rule ? (rule.kind === "right" ? rule.right : rule.kind) : "none",
        resource: req.stream ? "" : resourceOf(rule, req.message),
      });
      let caller: Caller;
      try {
        caller = await this.authenticate(req.header.get("authorization"), req.contextValues.get(peerIdentity), req.signal);
      } catch (e) {
        const err = ConnectError.from(e);
        void on?.write({ ...base(), user: "", tokenId: "", decision: "deny", result: codeName(err.code), message: err.rawMessage });
        throw e;
      }
      const who = { user: caller.user, tokenId: caller.tokenId };
      const d = this.decide(caller, rule, req.method.name);
      if (!d.allowed) {
        void on?.write({ ...base(), ...who, decision: "deny", result: codeName(d.code), message: d.message });
        throw new ConnectError(d.message, d.code);
      }
      req.contextValues.set(callerKey, caller);
      if (!on || !audited(rule, what, caller)) return next(req);
      if (!(await on.ready()))
        throw new ConnectError(
          `audit log unavailable (${on.failure}): calls that change anything are refused until it can be written`,
          Code.Unavailable,
        );
      const requestJson =
        on.level === "request" && !req.stream
          ? redactedJson(toJson(req.method.input, req.message as never, { alwaysEmitImplicit: false }))
          : "";
      try {
        const res = await next(req);
        void on.write({ ...base(), ...who, decision: "allow", result: "ok", message: "", requestJson });
        return res;
      } catch (e) {
        const err = ConnectError.from(e);
        void on.write({ ...base(), ...who, decision: "allow", result: codeName(err.code), message: err.rawMessage, requestJson });
        throw e;
      }
    };
  }
}

const READ_VERBS = new Set(["get", "list", "watch"]);

/** Whether an allowed call is audited: not the reads, unless it is a login (WhoAmI with credentials). */
function audited(rule: Rule | undefined, what: string, caller: Caller): boolean {
  if (!rule) return true;
  if (what.endsWith("AccessService/WhoAmI")) return caller.kind !== "anonymous";
  if (rule.kind === "right") return !READ_VERBS.has(rule.right.split(":")[1]!);
  if (rule.kind === "public") return what.endsWith("IdentityService/Join");
  if (rule.kind === "node") return what.endsWith("IdentityService/RenewCertificate");
  return false;
}

/** What a request is about, from its name, node or id fields: "instances/web", "nodes/n1". */
function resourceOf(rule: Rule | undefined, m: Record<string, unknown>): string {
  const kind = rule?.kind === "right" ? rule.right.split(":")[0]! : "";
  const field = (k: string) => (typeof m[k] === "string" ? m[k] : "");
  const [name, node, id] = [field("name"), field("node"), field("id")];
  if (kind === "instances") return name ? `instances/${name}` : "instances";
  if (kind === "nodes") return node ? `nodes/${node}${name ? `/orphans/${name}` : ""}` : name ? `nodes/${name}` : "nodes";
  if (kind === "tokens") return id ? `apitokens/${id}` : "apitokens";
  if (kind === "jointokens") return id ? `jointokens/${id}` : "jointokens";
  if (node) return `nodes/${node}`;
  return kind;
}

/** "permission_denied": the Connect code's name as the protocol spells it. */
function codeName(code: Code): string {
  return (Code[code] ?? String(code)).replace(/[A-Z]/g, (c, i: number) => (i > 0 ? "_" : "") + c.toLowerCase());
}

const refuse = (code: Code, message: string): Decision => ({ allowed: false, code, message });
const unauthenticated = (what: string): Decision =>
  refuse(Code.Unauthenticated, `${what}: credentials required (a token: Authorization: Bearer hvt_...)`);
