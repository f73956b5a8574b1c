/*
 * Join tokens: `HV10<ca hash>::<id>.<secret>` (k3s' K10 format, with an id so the store can find
 * the record without the secret).
 *
 *   HV10 │ 64 lowercase hex: sha256 of the CA cert DER │ :: │ id: 6 of [a-z0-9] │ . │ secret: 32 lowercase hex (128 bits)
 *
 * The agent checks the CA it fetches against the hash before it sends anything; the server finds
 * the record by id and compares sha256(secret) in constant time. A 128-bit random secret needs no
 * slow hash: nothing can be guessed from its SHA-256.
 *
 * checkJoin is the whole decision, pure, so it is table-tested; the handler only reads and writes.
 */
import { createHash, randomBytes, randomInt, timingSafeEqual } from "node:crypto";
import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { JoinTokenFormatError } from "./errors.js";

export const TOKEN_PREFIX = "HV10";
export const TOKEN_ID_RE = /^[a-z0-9]{6}$/;
export const TOKEN_SECRET_RE = /^[0-9a-f]{32}$/;
const CA_HASH_RE = /^[0-9a-f]{64}$/;
const ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";

export interface JoinToken {
  caHash: string;
  id: string;
  secret: string;
}

export function formatJoinToken(t: JoinToken): string {
  return `${TOKEN_PREFIX}${t.caHash}::${t.id}.${t.secret}`;
}

/** A new token for the CA with hash `caHash`: a random id and a 128-bit random secret. */
export function newJoinToken(caHash: string): JoinToken {
  if (!CA_HASH_RE.test(caHash)) throw new JoinTokenFormatError("ca hash must be 64 lowercase hex characters");
  let id = "";
  for (let i = 0; i < 6; i++) id += ID_ALPHABET[randomInt(ID_ALPHABET.length)];
  return { caHash, id, secret: randomBytes(16).toString("hex") };
}

/**
 * Parses a token. Errors say which part is wrong and never quote the token: it may be a real one
 * with one character mistyped, and error messages end up in logs.
 */
export function parseJoinToken(token: string): JoinToken {
  const s = token.trim();
  if (!s.startsWith(TOKEN_PREFIX)) throw new JoinTokenFormatError(`does not start with ${TOKEN_PREFIX}`);
  const sep = s.indexOf("::");
  if (sep < 0) throw new JoinTokenFormatError(`has no "::" between the ca hash and <id>.<secret>`);
  const caHash = s.slice(TOKEN_PREFIX.length, sep);
  if (!CA_HASH_RE.test(caHash)) throw new JoinTokenFormatError("ca hash must be 64 lowercase hex characters");
  const rest = s.slice(sep + 2);
  const dot = rest.indexOf(".");
  if (dot < 0) throw new JoinTokenFormatError(`has no "." between the id and the secret`);
  const id = rest.slice(0, dot);
  const secret = rest.slice(dot + 1);
  if (!TOKEN_ID_RE.test(id)) throw new JoinTokenFormatError("id must be 6 lowercase letters or digits");
  if (!TOKEN_SECRET_RE.test(secret)) throw new JoinTokenFormatError("secret must be 32 lowercase hex characters");
  return { caHash, id, secret };
}

export function hashSecret(secret: string): Uint8Array {
  return new Uint8Array(createHash("sha256").update(secret, "utf8").digest());
}

/** Whether `secret` hashes to `sha256`, in time independent of where they differ. */
export function secretMatches(secret: string, sha256: Uint8Array): boolean {
  const got = hashSecret(secret);
  return sha256.length === got.length && timingSafeEqual(got, sha256);
}

/** What checkJoin reads of a stored token (JoinTokenRecord has these fields). */
export interface JoinTokenState {
  secretSha256: Uint8Array;
  node: string;
  expireTime?: Timestamp;
  maxUses: number;
  used: number;
  revoked: boolean;
}

export type JoinRefusal = "unknown" | "wrong-secret" | "revoked" | "expired" | "used-up" | "wrong-node";

export type JoinDecision = { ok: true } | { ok: false; reason: JoinRefusal };

/**
 * Whether a join may go ahead. The secret is checked first, so whoever lacks it learns nothing
 * about the token (revoked, expired, used up, scoped) beyond its id existing.
 */
export function checkJoin(record: JoinTokenState | undefined, req: { now: Date; node: string; secret: string }): JoinDecision {
  if (!record) return { ok: false, reason: "unknown" };
  if (!secretMatches(req.secret, record.secretSha256)) return { ok: false, reason: "wrong-secret" };
  if (record.revoked) return { ok: false, reason: "revoked" };
  if (!record.expireTime || req.now.getTime() >= timestampMs(record.expireTime)) return { ok: false, reason: "expired" };
  if (record.maxUses > 0 && record.used >= record.maxUses) return { ok: false, reason: "used-up" };
  if (record.node !== "" && record.node !== req.node) return { ok: false, reason: "wrong-node" };
  return { ok: true };
}
