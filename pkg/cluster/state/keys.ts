/*
 * The cluster keyspace: one place builds and parses every key. Everything a node writes lives
 * under its own prefix nodes/<node>/, so that one etcd prefix role per node (its certificate's CN
 * is its etcd user) confines it, as Kubernetes' NodeRestriction confines a kubelet:
 *
 *   /hypervisor/v1/cluster                       ClusterIdentity         servers write; nodes read
 *   /hypervisor/v1/instances/<name>              Instance (desired)      the API and the scheduler
 *   /hypervisor/v1/assignments/<node>/<name>     Assignment              servers write; node reads its own
 *   /hypervisor/v1/allocations/<node>            Allocation              servers only
 *   /hypervisor/v1/nodeflags/<node>              NodeFlags (cordon, drain) servers only
 *   /hypervisor/v1/nodes/<node>/record           Node                    that node
 *   /hypervisor/v1/nodes/<node>/alive            Liveness, under its lease   that node
 *   /hypervisor/v1/nodes/<node>/endpoint         AgentEndpoint           that node
 *   /hypervisor/v1/nodes/<node>/status/<name>    Instance (status only)  that node (servers delete)
 *   /hypervisor/v1/nodes/<node>/orphans/<name>   Orphan                  that node
 *   /hypervisor/v1/jointokens/<id>               JoinTokenRecord (secret as sha256)   servers only
 *   /hypervisor/v1/nodebindings/<node>           NodeBinding (node secret as sha256)  servers only
 *   /hypervisor/v1/apitokens/<id>                ApiTokenRecord (secret as sha256)    servers only
 *   /hypervisor/v1/access/bootstrap              AccessBootstrap (made once)          servers only
 *   /hypervisor/v1/{election,consoletickets,events}/...                  servers only
 *
 * Servers may delete under a node's prefix (unplacing an instance from a lost node takes its
 * status with it); a node never writes outside it.
 */

export const ROOT = "/hypervisor/v1/";

const NODES = `${ROOT}nodes/`;

export const keys = {
  cluster: `${ROOT}cluster`,
  instances: `${ROOT}instances/`,
  instance: (name: string) => `${ROOT}instances/${name}`,
  assignments: `${ROOT}assignments/`,
  assignmentsOf: (node: string) => `${ROOT}assignments/${node}/`,
  assignment: (node: string, name: string) => `${ROOT}assignments/${node}/${name}`,
  allocations: `${ROOT}allocations/`,
  allocation: (node: string) => `${ROOT}allocations/${node}`,
  nodeFlagsPrefix: `${ROOT}nodeflags/`,
  nodeFlags: (node: string) => `${ROOT}nodeflags/${node}`,
  /** Everything of every node: records, liveness, endpoints, statuses, orphans. */
  nodes: NODES,
  /** Everything node `node` writes, and nothing else: the prefix its etcd role is granted. */
  nodePrefix: (node: string) => `${NODES}${node}/`,
  node: (node: string) => `${NODES}${node}/record`,
  alive: (node: string) => `${NODES}${node}/alive`,
  endpoint: (node: string) => `${NODES}${node}/endpoint`,
  statusesOf: (node: string) => `${NODES}${node}/status/`,
  status: (node: string, name: string) => `${NODES}${node}/status/${name}`,
  orphansOf: (node: string) => `${NODES}${node}/orphans/`,
  orphan: (node: string, name: string) => `${NODES}${node}/orphans/${name}`,
  election: (name: string) => `${ROOT}election/${name}`,
  events: `${ROOT}events/`,
  consoleTicket: (hash: string) => `${ROOT}consoletickets/${hash}`,
  joinTokens: `${ROOT}jointokens/`,
  joinToken: (id: string) => `${ROOT}jointokens/${id}`,
  nodeBindings: `${ROOT}nodebindings/`,
  nodeBinding: (node: string) => `${ROOT}nodebindings/${node}`,
  apiTokens: `${ROOT}apitokens/`,
  apiToken: (id: string) => `${ROOT}apitokens/${id}`,
  accessBootstrap: `${ROOT}access/bootstrap`,
} as const;

/** The last path segment of a key. */
export function baseName(key: string): string {
  return key.slice(key.lastIndexOf("/") + 1);
}

/** For assignments/<node>/<name>: [node, name]. */
export function parseAssignmentKey(key: string): [string, string] | undefined {
  if (!key.startsWith(keys.assignments)) return undefined;
  const rest = key.slice(keys.assignments.length).split("/");
  if (rest.length !== 2 || !rest[0] || !rest[1]) return undefined;
  return [rest[0], rest[1]];
}

/** What a key under nodes/<node>/ is. */
export type NodeKey = { node: string; kind: "record" | "alive" | "endpoint" } | { node: string; kind: "status" | "orphan"; name: string };

/** Parses a key under nodes/; undefined for anything else (a key of a newer version, say). */
export function parseNodeKey(key: string): NodeKey | undefined {
  if (!key.startsWith(NODES)) return undefined;
  const p = key.slice(NODES.length).split("/");
  const node = p[0];
  if (!node) return undefined;
  if (p.length === 2 && (p[1] === "record" || p[1] === "alive" || p[1] === "endpoint")) return { node, kind: p[1] };
  if (p.length === 3 && p[2] && (p[1] === "status" || p[1] === "orphans"))
    return { node, kind: p[1] === "status" ? "status" : "orphan", name: p[2] };
  return undefined;
}

/*
 * Labels through which the server tells agents what a spec cannot say. Label keys under the
 * reserved prefix are set by the system, never by users.
 */
export const RESERVED_LABEL_PREFIX = "hypervisor.io/";
/** Set by RestartInstance to the generation that asks for the restart. */
export const RESTART_LABEL = `${RESERVED_LABEL_PREFIX}restart-requested`;
/** Set by StopInstance when the user gave a timeout (seconds). */
export const STOP_TIMEOUT_LABEL = `${RESERVED_LABEL_PREFIX}stop-timeout-seconds`;
