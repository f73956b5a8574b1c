/*
 * etcd's own access control for the cluster's identities. etcd runs with --client-cert-auth: a
 * client that presents a certificate from the cluster CA and no username is the etcd user named
 * by the certificate's CN, so the CA decides who is who and these users need no password.
 *
 *   CN of the certificate   etcd user           role        may
 *   hypervisor-server       hypervisor-server   root        everything, auth management included
 *   (never issued)          root                root        nothing of ours: etcd wants it before auth is on
 *   node:<N>                node:<N>            node:<N>    readwrite  prefix /hypervisor/v1/nodes/<N>/
 *                                                           read       prefix /hypervisor/v1/assignments/<N>/
 *                                                           read       key    /hypervisor/v1/cluster
 *
 *   every server start:  role root ─► user root ─► user hypervisor-server ─► both granted root ─► auth enable
 *   node N joins:        role node:N ─► exactly its permissions ─► user node:N ─► granted node:N only
 *   node N revoked:      user node:N deleted ─► role node:N deleted ─► leases holding keys under nodes/N/ revoked
 *
 * Every step is idempotent (what exists is kept, what differs is corrected), so each runs again
 * safely after a crash half-way, and on every server start when auth is on already: a server's
 * certificate is root then. The prefixes end in '/': nodes/a alone would also cover nodes/a2/.
 * The read on the cluster key also serves the store's revision() and ping() (see etcd-store.ts).
 *
 * etcd 3.4 checks permissions when a request arrives and when a watch is created: a revoked node
 * is refused every request at once, but a watch it opened before keeps delivering (its own
 * assignments only) until its stream ends, and keep-alives of a lease it holds are not checked;
 * revokeNode therefore revokes those leases itself.
 */
import { randomBytes } from "node:crypto";
import { EtcdRoleExistsError, EtcdRoleNotFoundError, EtcdUserExistsError, EtcdUserNotFoundError, type IPermission } from "etcd3";
import { NAME_RE } from "../../validation/index.js";
import { type Options } from "../store/index.js";
import { keys } from "../state/index.js";
import type { EtcdStore } from "./etcd-store.js";
import { InvalidNodeNameError } from "./errors.js";
import { keyRange } from "./key-range.js";

/** The etcd user (and client certificate CN) of every server. */
export const ETCD_SERVER_USER = "hypervisor-server";
const ROOT = "root";

/** A node's etcd user and role, and the CN of its etcd client certificate. */
export function etcdNodeUser(node: string): string {
  checkNode(node);
  return `node:${node}`;
}

export interface EtcdPermission {
  access: "read" | "readwrite";
  /** A single key, or with prefix every key that starts with it. */
  key: string;
  prefix: boolean;
}

/** Everything node `node` may touch in etcd, and nothing else. */
export function nodePermissions(node: string): EtcdPermission[] {
  checkNode(node);
  return [
    { access: "readwrite", key: keys.nodePrefix(node), prefix: true },
    { access: "read", key: keys.assignmentsOf(node), prefix: true },
    { access: "read", key: keys.cluster, prefix: false },
  ];
}

/**
 * Creates the root role and the root and server users, then turns etcd's auth on. The caller is
 * a server: before auth is on anyone may do this, after it only root (a server's certificate).
 */
export async function enableAuth(store: EtcdStore, opts?: Options): Promise<void> {
  await store.authCall(opts, `add role ${ROOT}`, (auth) => ignore(auth.roleAdd({ name: ROOT }), EtcdRoleExistsError));
  for (const user of [ROOT, ETCD_SERVER_USER]) {
    await addUser(store, user, opts);
    await store.authCall(opts, `grant role ${ROOT} to user ${user}`, (auth) => auth.userGrantRole({ user, role: ROOT }));
  }
  // Enabling auth when it is on already succeeds and changes nothing (etcd 3.4 and later).
  await store.authCall(opts, "enable auth", (auth) => auth.authEnable());
}

/** Makes user and role node:<node> with exactly nodePermissions(node), correcting any difference. */
export async function grantNode(store: EtcdStore, node: string, opts?: Options): Promise<void> {
  await grantUser(store, etcdNodeUser(node), nodePermissions(node), opts); // a bad name rejects, before anything is built
}

/**
 * Makes user and role `role` (the CN of its certificate) with exactly `permissions`, correcting
 * any difference: a node's (grantNode), or a benchmark's simulated fleet of nodes.
 */
export async function grantUser(store: EtcdStore, role: string, permissions: EtcdPermission[], opts?: Options): Promise<void> {
  const want = permissions.map(toEtcd);
  await store.authCall(opts, `add role ${role}`, (auth) => ignore(auth.roleAdd({ name: role }), EtcdRoleExistsError));
  const have = (await store.authCall(opts, `get role ${role}`, (auth) => auth.roleGet({ role }))).perm;
  for (const p of have) {
    // Granting a range that is there already replaces its type; only ranges we do not want go.
    if (want.some((w) => sameRange(w, p))) continue;
    await store.authCall(opts, `revoke a permission of role ${role}`, (auth) =>
      auth.roleRevokePermission({ role, key: p.key, range_end: p.range_end }),
    );
  }
  for (const perm of want) {
    if (have.some((p) => sameRange(p, perm) && p.permType === perm.permType)) continue;
    await store.authCall(opts, `grant role ${role} ${perm.permType} on ${perm.key.toString()}`, (auth) =>
      auth.roleGrantPermission({ name: role, perm }),
    );
  }
  await addUser(store, role, opts);
  const roles = (await store.authCall(opts, `get user ${role}`, (auth) => auth.userGet({ name: role }))).roles;
  for (const other of roles.filter((r) => r !== role)) {
    await store.authCall(opts, `revoke role ${other} from user ${role}`, (auth) => auth.userRevokeRole({ name: role, role: other }));
  }
  if (!roles.includes(role))
    await store.authCall(opts, `grant role ${role} to user ${role}`, (auth) => auth.userGrantRole({ user: role, role }));
}

/**
 * Removes user and role node:<node>: every request the node makes from then on is refused. Then
 * revokes the leases that hold keys under the node's prefix (its liveness), which etcd would
 * otherwise let it keep renewing; their keys go with them.
 */
export async function revokeNode(store: EtcdStore, node: string, opts?: Options): Promise<void> {
  const role = etcdNodeUser(node);
  await store.authCall(opts, `delete user ${role}`, (auth) => ignore(auth.userDelete({ name: role }), EtcdUserNotFoundError));
  await store.authCall(opts, `delete role ${role}`, (auth) => ignore(auth.roleDelete({ role }), EtcdRoleNotFoundError));
  const held = await store.range(keys.nodePrefix(node), { ...opts, keysOnly: true });
  // revokeLease takes a lease that expired meanwhile as revoked already.
  for (const lease of new Set(held.kvs.map((kv) => kv.lease).filter((l) => l !== "0"))) await store.revokeLease(lease, opts);
}

function checkNode(node: string): void {
  if (!NAME_RE.test(node)) throw new InvalidNodeNameError(node);
}

/**
 * A user without a password: it can only be its certificate. The random password is for an etcd
 * older than 3.4, which does not know no_password and would otherwise store an empty one.
 */
async function addUser(store: EtcdStore, name: string, opts?: Options): Promise<void> {
  const password = randomBytes(32).toString("base64url");
  await store.authCall(opts, `add user ${name}`, (auth) =>
    ignore(auth.userAdd({ name, password, options: { no_password: true } }), EtcdUserExistsError),
  );
}

function toEtcd(p: EtcdPermission): IPermission {
  const permType = p.access === "read" ? "Read" : "Readwrite";
  if (p.prefix) return { permType, ...keyRange(p.key) };
  return { permType, key: Buffer.from(p.key), range_end: Buffer.alloc(0) };
}

function sameRange(a: IPermission, b: IPermission): boolean {
  return a.key.equals(b.key) && Buffer.from(a.range_end ?? []).equals(Buffer.from(b.range_end ?? []));
}

/** Awaits p, treating an error of class `expected` (already there, already gone) as success. */
async function ignore(p: Promise<unknown>, expected: new (...args: never[]) => Error): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof expected)) throw e;
  }
}
