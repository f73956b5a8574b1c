/*
 * Role bindings: a built-in role given to a user or a group, at cluster scope or in one project.
 * Users who log in with OIDC or a client certificate hold what their bindings (and their groups')
 * give; an API token holds the roles it was made with (tokens.ts), never more than its maker held.
 *
 *   rolebindings/<id> ──(servers' copy)──► index by subject ──► grants of (user, groups)
 *
 * The index is rebuilt when the copy changes (a binding is a rare write; a call reads it).
 */
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { randomBytes } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { RoleBindingRecordSchema, type RoleBindingRecord } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { codecs, keys } from "../../../pkg/cluster/state/index.js";
import { ifAbsent, type Store } from "../../../pkg/cluster/store/index.js";
import { checkName, checkPrincipal, show } from "../../../pkg/validation/index.js";
import { invalid, refuse } from "../validate.js";
import { grant, isRoleName, missingFor, noGrants, ROLE_NAMES, type Grants } from "./rights.js";

/** Bindings in the cluster: each is a key every server keeps and scans at a login. */
export const MAX_ROLE_BINDINGS = 10_000;

export interface BindingSource {
  readonly items: ReadonlyMap<string, { value: RoleBindingRecord }>;
  readonly revision: number;
}

export class RoleBindingIndex {
  private bySubject = new Map<string, RoleBindingRecord[]>();
  private builtAt = -1;

  constructor(private readonly source: BindingSource) {}

  /** What `user` and its `groups` are given. */
  grantsOf(user: string, groups: readonly string[]): Grants {
    this.refresh();
    const g = noGrants();
    for (const subject of [`user:${user}`, ...groups.map((x) => `group:${x}`)])
      for (const b of this.bySubject.get(subject) ?? []) grant(g, b.role, b.project);
    return g;
  }

  private refresh(): void {
    if (this.builtAt === this.source.revision) return;
    const m = new Map<string, RoleBindingRecord[]>();
    for (const { value } of this.source.items.values()) {
      const list = m.get(value.subject);
      if (list) list.push(value);
      else m.set(value.subject, [value]);
    }
    this.bySubject = m;
    this.builtAt = this.source.revision;
  }
}

/** "user:<name>" or "group:<name>", checked. */
export function checkSubject(field: string, subject: string): void {
  const m = /^(user|group):(.*)$/.exec(subject);
  if (!m) throw invalid(field, `${show(subject)} must be "user:<name>" or "group:<name>"`);
  refuse(checkPrincipal(field, m[2]!));
}

/**
 * Writes a new binding of `role` to `subject` at `project` for a caller holding `holder`; refuses
 * a role whose rights the caller lacks there, an unknown project, and a binding that exists.
 */
export async function createRoleBinding(
  store: Store,
  req: { subject: string; role: string; project: string },
  by: { user: string; grants: Pick<Grants, "cluster" | "projects"> },
  signal?: AbortSignal,
): Promise<RoleBindingRecord> {
  checkSubject("subject", req.subject);
  if (!isRoleName(req.role)) throw invalid("role", `${show(req.role)} is not a role (${ROLE_NAMES.join(", ")})`);
  if (req.project !== "") {
    refuse(checkName("project", req.project));
    if (!(await store.get(keys.project(req.project), signal ? { signal } : {})))
      throw new ConnectError(`project ${show(req.project)} not found`, Code.NotFound);
  }
  const missing = missingFor(by.grants, req.role, req.project);
  if (missing)
    throw new ConnectError(
      `${by.user} may not bind role ${req.role}${req.project ? ` in project ${req.project}` : " at cluster scope"}: it does not hold ${missing} there`,
      Code.PermissionDenied,
    );
  const { kvs } = await store.range(keys.roleBindings, signal ? { signal } : {});
  const all = kvs.map((kv) => codecs.roleBinding.decode(kv.value));
  const same = all.find((b) => b.subject === req.subject && b.role === req.role && b.project === req.project);
  if (same) throw new ConnectError(`${req.subject} already has role ${req.role} there (binding ${same.id})`, Code.AlreadyExists);
  if (all.length >= MAX_ROLE_BINDINGS)
    throw new ConnectError(`the cluster holds ${all.length} role bindings, the most it keeps: delete some`, Code.ResourceExhausted);
  const record = create(RoleBindingRecordSchema, {
    id: randomBytes(8).toString("hex"),
    subject: req.subject,
    role: req.role,
    project: req.project,
    createTime: timestampNow(),
    createdBy: by.user,
  });
  const res = await store.txn(
    [ifAbsent(keys.roleBinding(record.id))],
    [{ type: "put", key: keys.roleBinding(record.id), value: codecs.roleBinding.encode(record) }],
    [],
    signal ? { signal } : {},
  );
  if (!res.succeeded) throw new ConnectError("binding id taken; try again", Code.Aborted);
  return record;
}
