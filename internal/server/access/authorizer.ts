/*
 * Who calls, and may they: every RPC passes through one interceptor, and /metrics through the
 * same decision.
 *
 *   Authorization: Bearer hvt_<id>.<secret> ──► apitokens/<id> (informer, else the store)
 *        secret's SHA-256 matches, not revoked, not expired ──► user, roles ──► rights
 *   no header, a verified cluster certificate ──► server:<name> (every right), node:<name> (none),
 *        or user:<name> (what role bindings of user:<name> give)
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
import { codecs, DEFAULT_PROJECT, keys } from "../../../pkg/cluster/state/index.js";
import type { Store } from "../../../pkg/cluster/store/index.js";
import { secretMatches } from "../../../pkg/pki/index.js";
import type { Informer } from "../informer.js";
import { peerIdentity, type Peer } from "../peer.js";
import { ALL_RIGHTS, grant, holds, holdsAnywhere, noGrants, type Grants, type Right } from "./rights.js";
import { RULES, type Rule } from "./rules.js";
import { parseToken, TOKEN_PREFIX } from "./tokens.js";
import type { RoleBindingIndex } from "./role-bindings.js";
import { redactedJson, type AuditLog } from "./audit.js";
import { clientAddress } from "../client-limits.js";

export interface Caller {
  kind: "user" | "server" | "node" | "anonymous";
  /** "admin" (a token's user), "server:<name>", "node:<name>", or "" (anonymous). */
  user: string;
  /** An OIDC user's groups (from the configured claim). */
  groups: readonly string[];
  by: "token" | "certificate" | "oidc" | "none";
  tokenId: string;
  /** Roles at cluster scope, and the rights they and the project roles' shared rights give. */
  roles: readonly string[];
  rights: ReadonlySet<Right>;
  /** Rights in single projects, and the roles that give them. */
  projects: ReadonlyMap<string, ReadonlySet<Right>>;
  projectRoles: ReadonlyMap<string, readonly string[]>;
}

/** A caller holding `g`. */
export function withGrants(c: Omit<Caller, "roles" | "rights" | "projects" | "projectRoles">, g: Grants): Caller {
  return { ...c, roles: g.roles, rights: g.cluster, projects: g.projects, projectRoles: g.projectRoles };
}

/** May `caller` do `right` in `project` ("" for cluster scope)? */
export function may(caller: Caller, right: Right, project = ""): boolean {
  return holds({ cluster: caller.rights as Set<Right>, projects: caller.projects as Map<string, Set<Right>> }, right, project);
}

/**
 * The projects a list or watch shows: `requested` ("" is the default project; the interceptor
 * checked the caller may), or with "*" every project where the caller holds `right`.
 */
export function projectFilter(caller: Caller, right: Right, requested: string): (project: string) => boolean {
  if (requested === "*") return caller.rights.has(right) ? () => true : (p) => caller.projects.get(p)?.has(right) ?? false;
  const only = requested || DEFAULT_PROJECT;
  return (p) => p === only;
}

/** Everything: the servers, and every call when access control is off (`access: "none"`). */
export const UNRESTRICTED: Caller = withGrants(
  { kind: "server", user: "", groups: [], by: "none", tokenId: "" },
  { cluster: new Set(ALL_RIGHTS), projects: new Map(), roles: ["admin"], projectRoles: new Map() },
);

/** Store reads a second for tokens the server's copy lacks (see Authorizer.mayRead). */
export const STORE_READS_PER_SECOND = 20;

export const ANONYMOUS: Caller = withGrants({ kind: "anonymous", user: "", groups: [], by: "none", tokenId: "" }, noGrants());

/** The caller of the request being served (set by the interceptor before any handler runs). */
export const callerKey = createContextKey<Caller>(ANONYMOUS, { description: "the authenticated caller" });

export type Decision = { allowed: true } | { allowed: false; code: Code; message: string };

export class Authorizer {
  constructor(
    private readonly store: Store,
    /** The servers' copy of apitokens/; a miss (a token made a moment ago elsewhere) reads the store. */
    private readonly tokens?: Pick<Informer<ApiTokenRecord>, "get">,
    private readonly now: () => number = Date.now,
    /** What users who log in with OIDC or a client certificate are given. */
    private readonly bindings?: RoleBindingIndex,
    /** Verifies OIDC ID tokens (bearers that are not API tokens); none: only API tokens are taken. */
    private readonly oidc?: { verify(token: string, signal?: AbortSignal): Promise<{ user: string; groups: string[] }> },
  ) {}

  /** A user who proved who they are (OIDC, a client certificate): what its role bindings give. */
  private boundUser(user: string, groups: readonly string[], by: Caller["by"]): Caller {
    const g = this.bindings?.grantsOf(user, groups) ?? noGrants();
    return withGrants({ kind: "user", user, groups: [...groups], by, tokenId: "" }, g);
  }

  /** The caller of a request with this Authorization header and this verified client certificate. */
  async authenticate(authorization: string | null | undefined, peer: Peer | undefined, signal?: AbortSignal): Promise<Caller> {
    if (authorization) return this.byToken(authorization, signal);
    if (peer?.kind === "server") return { ...UNRESTRICTED, user: `server:${peer.name}`, by: "certificate" };
    if (peer?.kind === "node")
      return withGrants({ kind: "node", user: `node:${peer.name}`, groups: [], by: "certificate", tokenId: "" }, noGrants());
    if (peer?.kind === "user") return this.boundUser(peer.name, [], "certificate");
    return ANONYMOUS;
  }

  private async byToken(authorization: string, signal?: AbortSignal): Promise<Caller> {
    const m = /^Bearer +(\S+)$/.exec(authorization);
    if (!m) throw new ConnectError('authorization: expected "Bearer <token>"', Code.Unauthenticated);
    const bearer = m[1]!;
    if (this.oidc && !bearer.startsWith(TOKEN_PREFIX) && bearer.split(".").length === 3) {
      const who = await this.oidc.verify(bearer, signal);
      return this.boundUser(who.user, who.groups, "oidc");
    }
    const parsed = parseToken(bearer);
    if (!parsed)
      throw new ConnectError(
        `authorization: the token is malformed (expected hvt_<id>.<secret>${this.oidc ? ", or an OIDC ID token" : ""})`,
        Code.Unauthenticated,
      );
    const record = this.tokens?.get(keys.apiToken(parsed.id))?.value ?? (this.mayRead() ? await this.read(parsed.id, signal) : undefined);
    // Unknown and wrong secret read the same: an id alone tells nothing about a token's secret.
    if (!record || !secretMatches(parsed.secret, record.secretSha256))
      throw new ConnectError(`token ${parsed.id}: not a valid token of this cluster`, Code.Unauthenticated);
    if (record.revoked) throw new ConnectError(`token ${parsed.id}: revoked`, Code.Unauthenticated);
    const expires = record.expireTime ? Number(record.expireTime.seconds) * 1000 + record.expireTime.nanos / 1e6 : 0;
    if (expires <= this.now()) throw new ConnectError(`token ${parsed.id}: expired`, Code.Unauthenticated);
    let g = this.tokenGrants.get(record);
    if (!g) {
      g = noGrants();
      for (const role of record.roles) grant(g, role, record.project);
      this.tokenGrants.set(record, g);
    }
    return withGrants({ kind: "user", user: record.user, groups: [], by: "token", tokenId: record.id }, g);
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

  /** What each token record gives, made once per record (the informer's copy is replaced when it changes). */
  private readonly tokenGrants = new WeakMap<ApiTokenRecord, Grants>();

  private readBudget = STORE_READS_PER_SECOND;
  private budgetAt = 0;

  private async read(id: string, signal?: AbortSignal): Promise<ApiTokenRecord | undefined> {
    const kv = await this.store.get(keys.apiToken(id), signal ? { signal } : undefined);
    return kv ? codecs.apiToken.decode(kv.value) : undefined;
  }

  /** May `caller` do what `rule` guards? `what` names the call in the refusal. */
  decide(caller: Caller, rule: Rule | undefined, what: string, message: Record<string, unknown> = {}): Decision {
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
      case "right": {
        if (caller.kind === "anonymous") return unauthenticated(what);
        if (caller.rights.has(rule.right)) return { allowed: true };
        const projects = rule.in?.(message) ?? [""];
        const g = { cluster: caller.rights as Set<Right>, projects: caller.projects as Map<string, Set<Right>> };
        if (projects === "*") {
          if (holdsAnywhere(g, rule.right)) return { allowed: true };
        } else {
          const lacking = projects.find((p) => !holds(g, rule.right, p));
          if (projects.length > 0 && lacking === undefined) return { allowed: true };
          if (lacking)
            return refuse(
              Code.PermissionDenied,
              `${what}: ${caller.user} may not ${rule.right} in project ${lacking} (${rolesOf(caller)})`,
            );
        }
        return refuse(Code.PermissionDenied, `${what}: ${caller.user} may not ${rule.right} (${rolesOf(caller)})`);
      }
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
      // The one request of a server stream is read here (and handed on) so that the rule sees
      // its project, as it does a unary request's.
      let message: Record<string, unknown> = {};
      if (!req.stream) message = req.message;
      else if (req.method.methodKind === "server_streaming") {
        const first = await req.message[Symbol.asyncIterator]().next();
        if (!first.done) {
          const m = first.value;
          message = m;
          req = {
            ...req,
            message: (async function* () {
              yield m;
            })(),
          };
        }
      }
      const on = audit && audit.level !== "none" ? audit : undefined;
      // What every event of this call says, made only when there is one (not for reads).
      const base = () => ({
        sourceAddress: req.contextValues.get(clientAddress),
        method: `${req.service.name}/${req.method.name}`,
        verb: rule ? (rule.kind === "right" ? rule.right : rule.kind) : "none",
        resource: resourceOf(rule, message),
        project: projectOf(rule, message),
      });
      let caller: Caller;
      try {
        caller = await this.authenticate(req.header.get("authorization"), req.contextValues.get(peerIdentity), req.signal);
      } catch (e) {
        const err = ConnectError.from(e);
        void on?.write({ ...base(), user: "", tokenId: "", decision: "deny", result: codeName(err.code), message: err.rawMessage });
        throw e;
      }
      const who = { user: caller.user, groups: [...caller.groups], tokenId: caller.tokenId };
      const d = this.decide(caller, rule, req.method.name, message);
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
        on.level === "request" && req.method.methodKind !== "client_streaming" && req.method.methodKind !== "bidi_streaming"
          ? redactedJson(toJson(req.method.input, message as never, { alwaysEmitImplicit: false }))
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

/** The project(s) a request acts in, for its audit event: "ci", "ci,web", "*", or "" (cluster scope). */
function projectOf(rule: Rule | undefined, m: Record<string, unknown>): string {
  if (rule?.kind !== "right" || !rule.in) return "";
  const p = rule.in(m);
  return p === "*" ? "*" : p.join(",");
}

/** What a request is about, from its name, node or id fields: "instances/web", "nodes/n1", "certificates/user:ci". */
function resourceOf(rule: Rule | undefined, m: Record<string, unknown>): string {
  const kind = rule?.kind === "right" ? rule.right.split(":")[0]! : "";
  const field = (k: string) => (typeof m[k] === "string" ? m[k] : "");
  const [name, node, id] = [field("name"), field("node"), field("id")];
  if (kind === "instances") return name ? `instances/${name}` : "instances";
  if (kind === "nodes") return node ? `nodes/${node}${name ? `/orphans/${name}` : ""}` : name ? `nodes/${name}` : "nodes";
  // IssueUserCertificate: the user the certificate names (its only request with a CSR).
  if (kind === "tokens" && "csrPem" in m) return `certificates/user:${field("user")}`;
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

/** "roles: operator; in ci: viewer", or "no role". */
function rolesOf(c: Caller): string {
  const parts = c.roles.length > 0 ? [`roles: ${c.roles.join(", ")}`] : [];
  for (const [p, roles] of [...c.projectRoles].sort()) parts.push(`in ${p}: ${roles.join(", ")}`);
  return parts.length > 0 ? parts.join("; ") : "no role";
}
const unauthenticated = (what: string): Decision =>
  refuse(Code.Unauthenticated, `${what}: credentials required (a token: Authorization: Bearer hvt_...)`);
