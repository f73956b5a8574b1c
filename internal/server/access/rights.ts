/*
 * Rights and the built-in roles. A right is "<resource>:<verb>"; a role is a set of rights; a
 * caller holds the union of its roles' rights and nothing else (deny by default). The resources
 * and verbs are the issue's, plus what the API has that it did not name (node orphans, node
 * revocation, join tokens, metrics). docs/access.md shows the same table; its test reads it.
 */

export const RESOURCES = {
  instances: ["get", "list", "watch", "create", "update", "delete", "power", "console", "logs", "memory"],
  nodes: ["get", "list", "cordon", "drain", "adopt", "purge", "revoke"],
  images: ["list", "import"],
  jointokens: ["create", "list", "revoke"],
  // The caller's own API tokens; "manage": anyone's (create for another user, list all, revoke).
  tokens: ["create", "list", "revoke", "manage"],
  roles: ["list"],
  cluster: ["get", "metrics"],
  audit: ["read"],
} as const;

export type Resource = keyof typeof RESOURCES;
export type Right = { [R in Resource]: `${R}:${(typeof RESOURCES)[R][number]}` }[Resource];

export const ALL_RIGHTS: readonly Right[] = (Object.keys(RESOURCES) as Resource[]).flatMap((r) =>
  RESOURCES[r].map((v) => `${r}:${v}` as Right),
);

export interface RoleDefinition {
  name: RoleName;
  description: string;
  rights: ReadonlySet<Right>;
}

export const ROLE_NAMES = ["viewer", "operator", "project-admin", "admin"] as const;
export type RoleName = (typeof ROLE_NAMES)[number];

const VIEWER: Right[] = [
  "instances:get",
  "instances:list",
  "instances:watch",
  "nodes:get",
  "nodes:list",
  "images:list",
  "cluster:get",
  "roles:list",
  // Their own tokens, for scripts: no more than they hold (a token carries roles they have).
  "tokens:create",
  "tokens:list",
  "tokens:revoke",
];
const OPERATOR: Right[] = [
  ...VIEWER,
  "instances:create",
  "instances:update",
  "instances:delete",
  "instances:power",
  "instances:console",
  "instances:logs",
  "instances:memory",
  "images:import",
  "nodes:cordon",
  "nodes:drain",
];

export const ROLES: ReadonlyMap<RoleName, RoleDefinition> = new Map(
  (
    [
      ["viewer", "sees instances, nodes, images and the cluster; changes nothing", VIEWER],
      ["operator", "runs instances (create, power, consoles, logs, delete), imports images, cordons and drains nodes", OPERATOR],
      ["project-admin", "an operator; with projects (to come) it will also manage its project's members and quotas", OPERATOR],
      ["admin", "everything: join tokens, node revocation and orphans, anyone's tokens, metrics, the audit log", ALL_RIGHTS],
    ] as const
  ).map(([name, description, rights]) => [name, { name, description, rights: new Set<Right>(rights) }]),
);

export function isRoleName(name: string): name is RoleName {
  return (ROLE_NAMES as readonly string[]).includes(name);
}

/** The rights of these roles together (unknown names give nothing). */
export function rightsOf(roles: readonly string[]): Set<Right> {
  const out = new Set<Right>();
  for (const r of roles) if (isRoleName(r)) for (const right of ROLES.get(r)!.rights) out.add(right);
  return out;
}
