/*
 * AccessService: who the caller is, its API tokens, the built-in roles, and users' client
 * certificates. The interceptor has already checked the method's right (tokens:create ...); here
 * what depends on the request: a token for another user, or every user's list, needs
 * tokens:manage, and a token carries only roles whose every right the caller holds (nobody grants
 * more than they hold). A user's certificate carries no rights at all (its bindings do), so
 * issuing one is only the admin's (tokens:manage, by its rule).
 */
import { X509Certificate } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate, timestampMs, timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  ApiTokenRecordSchema,
  ProjectRightsSchema,
  RoleBindingSchema,
  RoleSchema,
  type AccessService,
  type RoleBindingRecord,
} from "../../../api/gen/hypervisor/v1/access_pb.js";
import { codecs, keys, update } from "../../../pkg/cluster/state/index.js";
import { ifAbsent, type Store } from "../../../pkg/cluster/store/index.js";
import type { Logger } from "../../../pkg/log/index.js";
import { type CertificateAuthority, CsrRejectedError, MAX_CSR_PEM_BYTES, signUserCsr } from "../../../pkg/pki/index.js";
import { checkName, checkPrincipal, checkText, LIMITS, show } from "../../../pkg/validation/index.js";
import { invalid, refuse } from "../validate.js";
import { callerKey, may, type Caller } from "./authorizer.js";
import { isRoleName, missingFor, ROLE_NAMES, ROLES, type Grants, type RoleName } from "./rights.js";
import { createRoleBinding } from "./role-bindings.js";
import { DEFAULT_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS, newToken, publicToken, tokenRecord } from "./tokens.js";

const ATTEMPTS = 5;
/** Live tokens (not revoked, not expired) one user may hold: each is a key every server keeps. */
export const MAX_TOKENS_PER_USER = 100;
const TOKEN_ID_RE = /^[a-z0-9]{10}$/;
/** A user's client certificate lives this long unless asked otherwise: short, as nothing revokes it. */
export const DEFAULT_USER_CERT_TTL_SECONDS = 30 * 24 * 3600;

/** What the login pages and `login --oidc` are told (GetAuthConfig). */
export interface AuthConfig {
  oidcIssuer: string;
  oidcClientId: string;
  oidcScopes: readonly string[];
}

const grantsOf = (c: Caller): Pick<Grants, "cluster" | "projects"> => ({
  cluster: c.rights as Grants["cluster"],
  projects: c.projects as Grants["projects"],
});

/**
 * `ca`: the cluster CA, with which IssueUserCertificate signs; absent on a server without TLS
 * (a client certificate would be of no use there), which then refuses it.
 */
export function accessService(store: Store, log?: Logger, auth?: AuthConfig, ca?: CertificateAuthority): ServiceImpl<typeof AccessService> {
  const callerOf = (hctx: HandlerContext): Caller => hctx.values.get(callerKey);
  const manages = (c: Caller) => c.rights.has("tokens:manage");
  /** Bindings the caller may see: all with roles:list at cluster scope; else its own and those where it binds. */
  const sees = (c: Caller, b: RoleBindingRecord) =>
    (c.rights.has("roles:list") && c.rights.has("roles:bind")) ||
    b.subject === `user:${c.user}` ||
    c.groups.some((g) => b.subject === `group:${g}`) ||
    (b.project !== "" && may(c, "roles:bind", b.project));
  const publicBinding = (b: RoleBindingRecord) =>
    create(RoleBindingSchema, {
      id: b.id,
      subject: b.subject,
      role: b.role,
      project: b.project,
      createdBy: b.createdBy,
      ...(b.createTime ? { createTime: b.createTime } : {}),
    });

  return {
    whoAmI(_req, hctx) {
      const c = callerOf(hctx);
      return {
        user: c.user,
        authenticatedBy: c.by,
        tokenId: c.tokenId,
        roles: [...c.roles],
        rights: [...c.rights].sort(),
        groups: [...c.groups],
        projectRights: [...c.projects.keys()].sort().map((project) =>
          create(ProjectRightsSchema, {
            project,
            roles: [...(c.projectRoles.get(project) ?? [])],
            rights: [...c.projects.get(project)!].sort(),
          }),
        ),
      };
    },

    getAuthConfig() {
      return { oidcIssuer: auth?.oidcIssuer ?? "", oidcClientId: auth?.oidcClientId ?? "", oidcScopes: [...(auth?.oidcScopes ?? [])] };
    },

    async createRoleBinding(req, hctx) {
      const c = callerOf(hctx);
      const record = await createRoleBinding(store, req, { user: c.user, grants: grantsOf(c) }, hctx.signal);
      log?.info({ binding: record.id, subject: record.subject, role: record.role, project: record.project, by: c.user }, "role bound");
      return { roleBinding: publicBinding(record) };
    },

    async listRoleBindings(req, hctx) {
      const c = callerOf(hctx);
      if (req.project !== "") refuse(checkName("project", req.project));
      const { kvs } = await store.range(keys.roleBindings, { signal: hctx.signal });
      const out = kvs
        .map((kv) => codecs.roleBinding.decode(kv.value))
        .filter((b) => (req.allScopes || b.project === req.project) && sees(c, b))
        .sort((a, b) => a.subject.localeCompare(b.subject) || a.project.localeCompare(b.project) || a.role.localeCompare(b.role));
      return { roleBindings: out.map(publicBinding) };
    },

    async deleteRoleBinding(req, hctx) {
      const c = callerOf(hctx);
      if (!/^[0-9a-f]{16}$/.test(req.id)) throw invalid("id", `${show(req.id)} is not a role binding id (16 hex digits)`);
      const res = await update(
        store,
        keys.roleBinding(req.id),
        codecs.roleBinding,
        ({ value }) => {
          // One the caller may not see is as good as absent.
          if (!value || !sees(c, value)) throw new ConnectError(`role binding ${show(req.id)} not found`, Code.NotFound);
          if (!may(c, "roles:bind", value.project))
            throw new ConnectError(
              `${c.user} may not unbind role ${value.role} from ${value.subject}${value.project ? ` in project ${value.project}` : ""}: that needs roles:bind there`,
              Code.PermissionDenied,
            );
          return { value: null };
        },
        { signal: hctx.signal },
      );
      if (res.written) log?.warn({ binding: req.id, by: c.user }, "role unbound");
      return {};
    },

    async createToken(req, hctx) {
      const c = callerOf(hctx);
      const user = req.user || (c.kind === "user" ? c.user : "");
      if (!user) throw invalid("user", "is required for a caller that is not a user (a server's certificate)");
      refuse(checkPrincipal("user", user));
      if (req.project !== "") {
        refuse(checkName("project", req.project));
        if (!(await store.get(keys.project(req.project), { signal: hctx.signal })))
          throw new ConnectError(`project ${show(req.project)} not found`, Code.NotFound);
      }
      if (user !== c.user && !manages(c))
        throw new ConnectError(
          `${c.user} may not make a token for ${show(user)}: that needs tokens:manage (role admin)`,
          Code.PermissionDenied,
        );
      if (req.roles.length === 0) throw invalid("roles", `at least one of ${ROLE_NAMES.join(", ")}`);
      const roles: RoleName[] = [];
      req.roles.forEach((r, i) => {
        if (!isRoleName(r)) throw invalid(`roles[${i}]`, `${show(r)} is not a role (${ROLE_NAMES.join(", ")})`);
        if (!roles.includes(r)) roles.push(r);
      });
      for (const r of roles) {
        const missing = missingFor(grantsOf(c), r, req.project);
        if (missing)
          throw new ConnectError(
            `${c.user} may not grant role ${r}${req.project ? ` in project ${req.project}` : ""}: it does not hold ${missing}${req.project ? " there" : ""}`,
            Code.PermissionDenied,
          );
      }
      if (req.ttlSeconds > MAX_TOKEN_TTL_SECONDS)
        throw invalid("ttl_seconds", `${req.ttlSeconds} is more than the maximum ${MAX_TOKEN_TTL_SECONDS} (one year)`);
      refuse(checkText("description", req.description, LIMITS.maxDescriptionBytes));
      const now = Date.now();
      const { kvs } = await store.range(keys.apiTokens, { signal: hctx.signal });
      const live = kvs
        .map((kv) => codecs.apiToken.decode(kv.value))
        .filter((r) => r.user === user && !r.revoked && r.expireTime && timestampMs(r.expireTime) > now).length;
      if (live >= MAX_TOKENS_PER_USER)
        throw new ConnectError(
          `user ${show(user)} holds ${live} live tokens, the most one user may: revoke some (token list, token revoke)`,
          Code.ResourceExhausted,
        );
      const ttlSeconds = req.ttlSeconds === 0 ? DEFAULT_TOKEN_TTL_SECONDS : req.ttlSeconds;
      for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
        const t = newToken();
        const record = tokenRecord(t, { user, roles, project: req.project, ttlSeconds, description: req.description, createdBy: c.user });
        // An id already taken draws another.
        const res = await store.txn(
          [ifAbsent(keys.apiToken(t.id))],
          [{ type: "put", key: keys.apiToken(t.id), value: codecs.apiToken.encode(record) }],
          [],
          { signal: hctx.signal },
        );
        if (res.succeeded) {
          log?.info({ token: t.id, user, roles, ttlSeconds, by: c.user }, "api token created");
          return { token: t.token, apiToken: publicToken(record) };
        }
      }
      throw new ConnectError("could not find a free token id; try again", Code.Aborted);
    },

    async listTokens(req, hctx) {
      const c = callerOf(hctx);
      if (req.allUsers && !manages(c))
        throw new ConnectError(`${c.user} may not list every user's tokens: that needs tokens:manage (role admin)`, Code.PermissionDenied);
      const { kvs } = await store.range(keys.apiTokens, { signal: hctx.signal });
      const all = kvs.map((kv) => codecs.apiToken.decode(kv.value));
      return {
        apiTokens: all
          .filter((r) => req.allUsers || r.user === c.user)
          .sort((a, b) => a.id.localeCompare(b.id))
          .map(publicToken),
      };
    },

    async revokeToken(req, hctx) {
      const c = callerOf(hctx);
      if (!TOKEN_ID_RE.test(req.id)) throw invalid("id", `${show(req.id)} is not a token id (10 lowercase letters or digits)`);
      const res = await update(
        store,
        keys.apiToken(req.id),
        codecs.apiToken,
        ({ value }) => {
          if (!value) throw new ConnectError(`token ${show(req.id)} not found`, Code.NotFound);
          // Someone else's token is as good as absent to a caller who may not see it.
          if (value.user !== c.user && !manages(c)) throw new ConnectError(`token ${show(req.id)} not found`, Code.NotFound);
          if (value.revoked) return undefined;
          return { value: create(ApiTokenRecordSchema, { ...value, revoked: true, revokeTime: timestampNow() }) };
        },
        { signal: hctx.signal },
      );
      if (res.written) log?.warn({ token: req.id, by: c.user }, "api token revoked");
      return { apiToken: publicToken(res.value!) };
    },

    async issueUserCertificate(req, hctx) {
      const c = callerOf(hctx);
      refuse(checkName("user", req.user));
      if (req.csrPem === "") throw invalid("csr_pem", "is required");
      if (req.csrPem.length > MAX_CSR_PEM_BYTES)
        throw invalid("csr_pem", `is ${req.csrPem.length} bytes; at most ${MAX_CSR_PEM_BYTES} allowed`);
      if (req.ttlSeconds > LIMITS.maxUserCertTtlSeconds)
        throw invalid("ttl_seconds", `${req.ttlSeconds} is more than the maximum ${LIMITS.maxUserCertTtlSeconds} (one year)`);
      if (!ca)
        throw new ConnectError(
          "this server serves without TLS, so it has no cluster CA to sign with and could not see a client certificate: user certificates need a server with TLS",
          Code.FailedPrecondition,
        );
      const ttlSeconds = req.ttlSeconds === 0 ? DEFAULT_USER_CERT_TTL_SECONDS : req.ttlSeconds;
      let certificatePem: string;
      try {
        certificatePem = await signUserCsr(ca, req.csrPem, { user: req.user, ttlSeconds });
      } catch (e) {
        if (e instanceof CsrRejectedError) throw invalid("csr_pem", e.message);
        throw e;
      }
      const cert = new X509Certificate(certificatePem);
      const expires = new Date(cert.validTo);
      log?.info({ user: req.user, serial: cert.serialNumber, expires: expires.toISOString(), by: c.user }, "user certificate issued");
      return { certificatePem, caPem: ca.certPem, expireTime: timestampFromDate(expires) };
    },

    listRoles() {
      return {
        roles: [...ROLES.values()].map((r) =>
          create(RoleSchema, { name: r.name, description: r.description, rights: [...r.rights].sort() }),
        ),
      };
    },
  };
}
