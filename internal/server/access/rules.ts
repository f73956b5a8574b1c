/*
 * What every RPC needs, by "<package.Service>/<Method>": a right, or one of the kinds that no role
 * gives. Deny by default: a method missing here is refused (the interceptor) and fails the suite
 * (the table test walks every service descriptor).
 *
 *   public         anyone, even without credentials (the CA, a join, WhoAmI)
 *   authenticated  any caller with a valid token or cluster certificate
 *   node           a node's certificate only (renewal, instance lookups)
 *   servers        a server's certificate only (AgentService: served by agents, for servers)
 *   right          a caller whose roles give that right (servers hold every right): at cluster
 *                  scope, or, for a rule with `in`, in every project the request names ("*":
 *                  in some project; the handler then shows only what the caller may see)
 */
import { DEFAULT_PROJECT } from "../../../pkg/cluster/state/index.js";
import type { Right } from "./rights.js";

/** The projects a request acts in: "" is cluster scope, "*" any project the caller has the right in. */
export type ProjectsOf = (message: Record<string, unknown>) => readonly string[] | "*";

export type Rule =
  | { kind: "public" }
  | { kind: "authenticated" }
  | { kind: "node" }
  | { kind: "servers" }
  | { kind: "right"; right: Right; in?: ProjectsOf };

const right = (r: Right, in_?: ProjectsOf): Rule => (in_ ? { kind: "right", right: r, in: in_ } : { kind: "right", right: r });
const str = (v: unknown) => (typeof v === "string" ? v : "");
/** The request's `project` field, empty meaning the default project. */
const project: ProjectsOf = (m) => [str(m.project) || DEFAULT_PROJECT];
/** A list or watch: one project, or "*". */
const listed: ProjectsOf = (m) => (m.project === "*" ? "*" : [str(m.project) || DEFAULT_PROJECT]);
/** A batch: each entry's project. */
const batch: ProjectsOf = (m) =>
  Array.isArray(m.instances) ? [...new Set(m.instances.map((i: Record<string, unknown>) => str(i.project) || DEFAULT_PROJECT))] : [];
/** ProjectService: the project is the request's name. */
const named: ProjectsOf = (m) => [str(m.name)];
/** A binding's scope: its project, or cluster scope. */
const scope: ProjectsOf = (m) => [str(m.project)];
const anywhere: ProjectsOf = () => "*";
const inst = (r: Right) => right(r, project);
const PUBLIC: Rule = { kind: "public" };
const AUTHENTICATED: Rule = { kind: "authenticated" };
const NODE: Rule = { kind: "node" };
const SERVERS: Rule = { kind: "servers" };

const P = "hypervisor.v1.";

export const RULES: ReadonlyMap<string, Rule> = new Map<string, Rule>([
  [`${P}InstanceService/CreateInstance`, inst("instances:create")],
  [`${P}InstanceService/CreateInstances`, right("instances:create", batch)],
  [`${P}InstanceService/GetInstance`, inst("instances:get")],
  [`${P}InstanceService/ListInstances`, right("instances:list", listed)],
  [`${P}InstanceService/DeleteInstance`, inst("instances:delete")],
  [`${P}InstanceService/StartInstance`, inst("instances:power")],
  [`${P}InstanceService/StopInstance`, inst("instances:power")],
  [`${P}InstanceService/RestartInstance`, inst("instances:power")],
  [`${P}InstanceService/WatchInstances`, right("instances:watch", listed)],
  [`${P}InstanceService/SetInstanceMemory`, inst("instances:memory")],
  [`${P}InstanceService/GetInstanceLogs`, inst("instances:logs")],
  [`${P}InstanceService/ExplainInstance`, inst("instances:get")],
  [`${P}NodeService/ListNodes`, right("nodes:list")],
  [`${P}NodeService/GetNode`, right("nodes:get")],
  [`${P}NodeService/CordonNode`, right("nodes:cordon")],
  [`${P}NodeService/UncordonNode`, right("nodes:cordon")],
  [`${P}NodeService/DrainNode`, right("nodes:drain")],
  [`${P}NodeService/ListOrphans`, right("nodes:get")],
  [`${P}NodeService/AdoptOrphan`, right("nodes:adopt")],
  [`${P}NodeService/PurgeOrphan`, right("nodes:purge")],
  [`${P}ClusterService/GetVersion`, AUTHENTICATED],
  [`${P}ClusterService/GetHealth`, AUTHENTICATED],
  [`${P}ClusterService/GetCounts`, right("cluster:get")],
  [`${P}ClusterService/ListDrivers`, right("cluster:get")],
  [`${P}ImageService/ImportImage`, right("images:import")],
  [`${P}ImageService/ListImages`, right("images:list")],
  [`${P}ConsoleService/CreateConsoleTicket`, inst("instances:console")],
  [`${P}IdentityService/GetCA`, PUBLIC],
  [`${P}IdentityService/Join`, PUBLIC],
  [`${P}IdentityService/CreateJoinToken`, right("jointokens:create")],
  [`${P}IdentityService/ListJoinTokens`, right("jointokens:list")],
  [`${P}IdentityService/RevokeJoinToken`, right("jointokens:revoke")],
  [`${P}IdentityService/RenewCertificate`, NODE],
  [`${P}IdentityService/RevokeNode`, right("nodes:revoke")],
  [`${P}AgentSupportService/LookupInstance`, NODE],
  [`${P}AgentService/StreamLogs`, SERVERS],
  [`${P}AgentService/ImportImage`, SERVERS],
  [`${P}AgentService/ListImages`, SERVERS],
  [`${P}AgentService/PurgeOrphan`, SERVERS],
  [`${P}AgentService/Console`, SERVERS],
  [`${P}AgentService/ConsoleAddress`, SERVERS],
  [`${P}AccessService/WhoAmI`, PUBLIC],
  [`${P}AccessService/CreateToken`, right("tokens:create")],
  [`${P}AccessService/ListTokens`, right("tokens:list")],
  [`${P}AccessService/RevokeToken`, right("tokens:revoke")],
  [`${P}AccessService/ListRoles`, right("roles:list")],
  [`${P}AccessService/CreateRoleBinding`, right("roles:bind", scope)],
  // Which bindings: the handler shows those the caller may see (and deletes only those it may bind).
  [`${P}AccessService/ListRoleBindings`, AUTHENTICATED],
  [`${P}AccessService/DeleteRoleBinding`, right("roles:bind", anywhere)],
  [`${P}AccessService/GetAuthConfig`, PUBLIC],
  // Anyone's credentials: a certificate for any user name, whatever bindings that name has.
  [`${P}AccessService/IssueUserCertificate`, right("tokens:manage")],
  [`${P}ProjectService/CreateProject`, right("projects:create")],
  [`${P}ProjectService/GetProject`, right("projects:get", named)],
  // Which projects: the handler shows those the caller has a role in (all with projects:list).
  [`${P}ProjectService/ListProjects`, AUTHENTICATED],
  [`${P}ProjectService/UpdateProject`, right("projects:update")],
  [`${P}ProjectService/DeleteProject`, right("projects:delete")],
  [`${P}AuditService/ListAuditEvents`, right("audit:read")],
]);

/** The rule of an HTTP path outside the RPCs. */
export const METRICS_RULE: Rule = right("cluster:metrics");
