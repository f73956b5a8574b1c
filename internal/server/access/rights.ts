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
  // "bind": create and delete role bindings (in a project, with the right there).
  roles: ["list", "bind"],
  projects: ["get", "list", "create", "update", "delete"],
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
  "projects:get",
  "projects:list",
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
const PROJECT_ADMIN: Right[] = [...OPERATOR, "roles:bind"];

export const ROLES: ReadonlyMap<RoleName, RoleDefinition> = new Map(
  (
    [
      ["viewer", "sees instances, nodes, images and the cluster; changes nothing", VIEWER],
      ["operator", "runs instances (create, power, consoles, logs, delete), imports images, cordons and drains nodes", OPERATOR],
      ["project-admin", "an operator who also binds roles (in a project: its members; never its quota)", PROJECT_ADMIN],
      [
        "admin",
        "everything: join tokens, node revocation and orphans, anyone's tokens, user certificates, metrics, the audit log",
        ALL_RIGHTS,
      ],
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

/*
 * Scope. A role bound at cluster scope gives all its rights everywhere. Bound in a project it
 * gives, in that project, its rights over the project's own things (PROJECT_SCOPED), and at
 * cluster scope only what every member of a project needs to work (SHARED: the drivers, images
 * and nodes to place on, its own tokens, the roles): never a node action, an import, a join
 * token, anyone's tokens, the audit log or another project.
 */
export const PROJECT_SCOPED: ReadonlySet<Right> = new Set<Right>([
  ...RESOURCES.instances.map((v) => `instances:${v}` as Right),
  "roles:bind",
  "projects:get",
]);
export const SHARED: ReadonlySet<Right> = new Set<Right>([
  "tokens:create",
  "tokens:list",
  "tokens:revoke",
  "roles:list",
  "images:list",
  "cluster:get",
  "nodes:get",
  "nodes:list",
]);

/** What a caller holds: rights everywhere, and rights in single projects. */
export interface Grants {
  cluster: Set<Right>;
  projects: Map<string, Set<Right>>;
  /** Role names, for people: at cluster scope, and by project. */
  roles: string[];
  projectRoles: Map<string, string[]>;
}

export function noGrants(): Grants {
  return { cluster: new Set(), projects: new Map(), roles: [], projectRoles: new Map() };
}

/** Adds role `role` bound at `project` ("" for cluster scope) to `g`; unknown names add nothing. */
export function grant(g: Grants, role: string, project: string): Grants {
  if (!isRoleName(role)) return g;
  const rights = ROLES.get(role)!.rights;
  if (project === "") {
    for (const r of rights) g.cluster.add(r);
    if (!g.roles.includes(role)) g.roles.push(role);
    return g;
  }
  let in_ = g.projects.get(project);
  if (!in_) g.projects.set(project, (in_ = new Set()));
  for (const r of rights) {
    if (PROJECT_SCOPED.has(r)) in_.add(r);
    else if (SHARED.has(r)) g.cluster.add(r);
  }
  const names = g.projectRoles.get(project) ?? [];
  if (!names.includes(role)) g.projectRoles.set(project, [...names, role]);
  return g;
}

/** Whether `g` holds `right` in `project` ("" asks for cluster scope). */
export function holds(g: Pick<Grants, "cluster" | "projects">, right: Right, project = ""): boolean {
  return g.cluster.has(right) || (project !== "" && (g.projects.get(project)?.has(right) ?? false));
}

/** Whether `g` holds `right` anywhere: at cluster scope or in some project. */
export function holdsAnywhere(g: Pick<Grants, "cluster" | "projects">, right: Right): boolean {
  if (g.cluster.has(right)) return true;
  for (const rights of g.projects.values()) if (rights.has(right)) return true;
  return false;
}

/**
 * The first right that binding `role` at `project` would give and `holder` lacks, or undefined
 * when it holds them all: nobody grants more than they hold.
 */
export function missingFor(holder: Pick<Grants, "cluster" | "projects">, role: RoleName, project: string): Right | undefined {
  const wanted = grant(noGrants(), role, project);
  for (const r of wanted.cluster) if (!holder.cluster.has(r)) return r;
  for (const [p, rights] of wanted.projects) for (const r of rights) if (!holds(holder, r, p)) return r;
  return undefined;
}
