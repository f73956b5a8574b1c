/*
 * AccessService: who the caller is, its API tokens, the built-in roles. The interceptor has
 * already checked the method's right (tokens:create ...); here what depends on the request: a
 * token for another user, or every user's list, needs tokens:manage, and a token carries only
 * roles whose every right the caller holds (nobody grants more than they hold).
 */
import { create } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { ApiTokenRecordSchema, RoleSchema, type AccessService } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { codecs, keys, update } from "../../../pkg/cluster/state/index.js";
import { ifAbsent, type Store } from "../../../pkg/cluster/store/index.js";
import type { Logger } from "../../../pkg/log/index.js";
import { checkName, checkText, LIMITS, show } from "../../../pkg/validation/index.js";
import { invalid, refuse } from "../validate.js";
import { callerKey, type Caller } from "./authorizer.js";
import { isRoleName, ROLE_NAMES, ROLES, type RoleName } from "./rights.js";
import { DEFAULT_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS, newToken, publicToken, tokenRecord } from "./tokens.js";

const ATTEMPTS = 5;
/** Live tokens (not revoked, not expired) one user may hold: each is a key every server keeps. */
export const MAX_TOKENS_PER_USER = 100;
const TOKEN_ID_RE = /^[a-z0-9]{10}$/;

export function accessService(store: Store, log?: Logger): ServiceImpl<typeof AccessService> {
  const callerOf = (hctx: HandlerContext): Caller => hctx.values.get(callerKey);
  const manages = (c: Caller) => c.rights.has("tokens:manage");

  return {
    whoAmI(_req, hctx) {
      const c = callerOf(hctx);
      return { user: c.user, authenticatedBy: c.by, tokenId: c.tokenId, roles: [...c.roles], rights: [...c.rights].sort() };
    },

    async createToken(req, hctx) {
      const c = callerOf(hctx);
      const user = req.user || (c.kind === "user" ? c.user : "");
      if (!user) throw invalid("user", "is required for a caller that is not a user (a server's certificate)");
      refuse(checkName("user", user));
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
        const missing = [...ROLES.get(r)!.rights].filter((right) => !c.rights.has(right));
        if (missing.length > 0)
          throw new ConnectError(
            `${c.user} may not grant role ${r}: it does not hold ${missing.slice(0, 5).join(", ")}${missing.length > 5 ? ", ..." : ""}`,
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
        const record = tokenRecord(t, { user, roles, ttlSeconds, description: req.description, createdBy: c.user });
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
          return { value: create(ApiTokenRecordSchema, { ...value, revoked: true }) };
        },
        { signal: hctx.signal },
      );
      if (res.written) log?.warn({ token: req.id, by: c.user }, "api token revoked");
      return { apiToken: publicToken(res.value!) };
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
