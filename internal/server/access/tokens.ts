/*
 * API tokens: `hvt_<id>.<secret>`, the id public (10 of [a-z0-9]), the secret 32 random bytes
 * (base64url) kept only as its SHA-256. And the bootstrap: the cluster's first token, made once.
 *
 *   first start ──► write <pki-dir>/admin-token.<id> (0600)
 *                   ──► txn: access/bootstrap absent? put it + apitokens/<id> (role admin)
 *                        ├── won: rename to <pki-dir>/admin-token
 *                        └── another server won: remove this attempt's file
 */
import { randomBytes, randomInt } from "node:crypto";
import { rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  AccessBootstrapSchema,
  ApiTokenRecordSchema,
  ApiTokenSchema,
  type ApiToken,
  type ApiTokenRecord,
} from "../../../api/gen/hypervisor/v1/access_pb.js";
import { codecs, keys } from "../../../pkg/cluster/state/index.js";
import type { Store } from "../../../pkg/cluster/store/index.js";
import { hashSecret, writePrivateFile } from "../../../pkg/pki/index.js";

export const TOKEN_PREFIX = "hvt_";
const ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";
const TOKEN_RE = /^hvt_([a-z0-9]{10})\.([A-Za-z0-9_-]{43})$/;
/** The bootstrap token's file, in the servers' pki directory (beside ca.key). */
export const ADMIN_TOKEN_FILE = "admin-token";
export const DEFAULT_TOKEN_TTL_SECONDS = 90 * 24 * 3600;
export const MAX_TOKEN_TTL_SECONDS = 365 * 24 * 3600;
/** The bootstrap token lives until revoked: it is how an operator gets in. */
const BOOTSTRAP_TTL_SECONDS = 100 * 365 * 24 * 3600;

export interface NewToken {
  id: string;
  secret: string;
  token: string;
}

export function newToken(): NewToken {
  let id = "";
  for (let i = 0; i < 10; i++) id += ID_ALPHABET[randomInt(ID_ALPHABET.length)];
  const secret = randomBytes(32).toString("base64url");
  return { id, secret, token: `${TOKEN_PREFIX}${id}.${secret}` };
}

/** The id and secret of a well-formed token, or undefined (never echo the token: it may be real). */
export function parseToken(token: string): { id: string; secret: string } | undefined {
  const m = TOKEN_RE.exec(token);
  return m ? { id: m[1]!, secret: m[2]! } : undefined;
}

export function tokenRecord(
  t: NewToken,
  p: {
    user: string;
    roles: readonly string[];
    project?: string;
    ttlSeconds: number;
    description: string;
    createdBy: string;
    nowMs?: number;
  },
): ApiTokenRecord {
  const now = p.nowMs ?? Date.now();
  return create(ApiTokenRecordSchema, {
    id: t.id,
    secretSha256: hashSecret(t.secret),
    user: p.user,
    roles: [...p.roles],
    createTime: timestampFromMs(now),
    expireTime: timestampFromMs(now + p.ttlSeconds * 1000),
    description: p.description,
    createdBy: p.createdBy,
    project: p.project ?? "",
  });
}

/** The record as the API shows it: no secret. */
export function publicToken(r: ApiTokenRecord): ApiToken {
  return create(ApiTokenSchema, {
    id: r.id,
    user: r.user,
    roles: r.roles,
    ...(r.createTime ? { createTime: r.createTime } : {}),
    ...(r.expireTime ? { expireTime: r.expireTime } : {}),
    revoked: r.revoked,
    description: r.description,
    createdBy: r.createdBy,
    project: r.project,
  });
}

/**
 * Makes the cluster's bootstrap token if no server ever did: role admin, user admin, written 0600
 * before the store says it exists (a crash between the two leaves a file no token matches; one
 * after leaves admin-token.<id>, which does), then renamed to `<pkiDir>/admin-token`. Returns the
 * file when this call made it.
 */
export async function ensureBootstrapToken(store: Store, pkiDir: string, server: string): Promise<string | undefined> {
  if (await store.get(keys.accessBootstrap)) return undefined;
  const t = newToken();
  // Its own name until the store says this server won: servers sharing the directory at their
  // first start race, and the loser must not remove (or overwrite) the winner's file.
  const attempt = `${ADMIN_TOKEN_FILE}.${t.id}`;
  await writePrivateFile(pkiDir, attempt, `${t.token}\n`);
  const record = tokenRecord(t, {
    user: "admin",
    roles: ["admin"],
    ttlSeconds: BOOTSTRAP_TTL_SECONDS,
    description: "bootstrap: the cluster's first token",
    createdBy: "bootstrap",
  });
  const res = await store.txn(
    [{ key: keys.accessBootstrap, target: "create", result: "=", value: 0 }],
    [
      {
        type: "put",
        key: keys.accessBootstrap,
        value: codecs.accessBootstrap.encode(
          create(AccessBootstrapSchema, { tokenId: t.id, createTime: timestampFromMs(Date.now()), server }),
        ),
      },
      { type: "put", key: keys.apiToken(t.id), value: codecs.apiToken.encode(record) },
    ],
  );
  if (!res.succeeded) {
    await rm(join(pkiDir, attempt), { force: true });
    return undefined;
  }
  const file = join(pkiDir, ADMIN_TOKEN_FILE);
  await rename(join(pkiDir, attempt), file);
  return file;
}
