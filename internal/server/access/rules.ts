/*
 * What every RPC needs, by "<package.Service>/<Method>": a right, or one of the kinds that no role
 * gives. Deny by default: a method missing here is refused (the interceptor) and fails the suite
 * (the table test walks every service descriptor).
 *
 *   public         anyone, even without credentials (the CA, a join, WhoAmI)
 *   authenticated  any caller with a valid token or cluster certificate
 *   node           a node's certificate only (renewal, instance lookups)
 *   servers        a server's certificate only (AgentService: served by agents, for servers)
 *   right          a caller whose roles give that right (servers hold every right)
 */
import type { Right } from "./rights.js";

export type Rule =
  { kind: "public" } | { kind: "authenticated" } | { kind: "node" } | { kind: "servers" } | { kind: "right"; right: Right };

const right = (r: Right): Rule => ({ kind: "right", right: r });
const PUBLIC: Rule = { kind: "public" };
const AUTHENTICATED: Rule = { kind: "authenticated" };
const NODE: Rule = { kind: "node" };
const SERVERS: Rule = { kind: "servers" };

const P = "hypervisor.v1.";

export const RULES: ReadonlyMap<string, Rule> = new Map<string, Rule>([
  [`${P}InstanceService/CreateInstance`, right("instances:create")],
  [`${P}InstanceService/CreateInstances`, right("instances:create")],
  [`${P}InstanceService/GetInstance`, right("instances:get")],
  [`${P}InstanceService/ListInstances`, right("instances:list")],
  [`${P}InstanceService/DeleteInstance`, right("instances:delete")],
  [`${P}InstanceService/StartInstance`, right("instances:power")],
  [`${P}InstanceService/StopInstance`, right("instances:power")],
  [`${P}InstanceService/RestartInstance`, right("instances:power")],
  [`${P}InstanceService/WatchInstances`, right("instances:watch")],
  [`${P}InstanceService/SetInstanceMemory`, right("instances:memory")],
  [`${P}InstanceService/GetInstanceLogs`, right("instances:logs")],
  [`${P}InstanceService/ExplainInstance`, right("instances:get")],
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
  [`${P}ConsoleService/CreateConsoleTicket`, right("instances:console")],
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
  [`${P}AuditService/ListAuditEvents`, right("audit:read")],
]);

/** The rule of an HTTP path outside the RPCs. */
export const METRICS_RULE: Rule = right("cluster:metrics");
