/*
 * The cluster keyspace: one place builds and parses every key. Everything a node writes lives
 * under its own prefix nodes/<node>/, so that one etcd prefix role per node (its certificate's CN
 * is its etcd user) confines it, as Kubernetes' NodeRestriction confines a kubelet:
 *
 *   /hypervisor/v1/cluster                       ClusterIdentity         servers write; nodes read
 *   /hypervisor/v1/instances/<project>/<name>    Instance (desired)      the API and the scheduler
 *   /hypervisor/v1/projects/<project>            ProjectRecord           servers only
 *   /hypervisor/v1/projectusage/<project>        ProjectUsage (quota'd projects) servers only
 *   /hypervisor/v1/assignments/<node>/<project>/<name>   Assignment      servers write; node reads its own
 *   /hypervisor/v1/allocations/<node>            Allocation              servers only
 *   /hypervisor/v1/nodeflags/<node>              NodeFlags (cordon, drain) servers only
 *   /hypervisor/v1/nodes/<node>/record           Node                    that node
 *   /hypervisor/v1/nodes/<node>/alive            Liveness, under its lease   that node
 *   /hypervisor/v1/nodes/<node>/endpoint         AgentEndpoint           that node
 *   /hypervisor/v1/nodes/<node>/status/<project>/<name>   Instance (status only)  that node (servers delete)
 *   /hypervisor/v1/nodes/<node>/orphans/<project>/<name>  Orphan                  that node
 *   /hypervisor/v1/jointokens/<id>               JoinTokenRecord (secret as sha256)   servers only
 *   /hypervisor/v1/nodebindings/<node>           NodeBinding (node secret as sha256)  servers only
 *   /hypervisor/v1/apitokens/<id>                ApiTokenRecord (secret as sha256)    servers only
 *   /hypervisor/v1/rolebindings/<id>             RoleBindingRecord                    servers only
 *   /hypervisor/v1/access/bootstrap              AccessBootstrap (made once)          servers only
 *   /hypervisor/v1/{election,consoletickets,events}/...                  servers only
 *
 * Servers may delete under a node's prefix (unplacing an instance from a lost node takes its
 * status with it); a node never writes outside it.
 *
 * An instance is named by its ref, "<project>/<name>": names are unique within a project, so the
 * ref is the unit every key, queue and map of instances is keyed by. Neither part can hold a "/".
 */

export const ROOT = "/hypervisor/v1/";

const NODES = `${ROOT}nodes/`;

export const keys = {
  cluster: `${ROOT}cluster`,
  instances: `${ROOT}instances/`,
  instancesOf: (project: string) => `${ROOT}instances/${project}/`,
  instance: (ref: string) => `${ROOT}instances/${ref}`,
  projects: `${ROOT}projects/`,
  project: (name: string) => `${ROOT}projects/${name}`,
  projectUsage: (name: string) => `${ROOT}projectusage/${name}`,
  roleBindings: `${ROOT}rolebindings/`,
  roleBinding: (id: string) => `${ROOT}rolebindings/${id}`,
  assignments: `${ROOT}assignments/`,
  assignmentsOf: (node: string) => `${ROOT}assignments/${node}/`,
  assignment: (node: string, ref: string) => `${ROOT}assignments/${node}/${ref}`,
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
  status: (node: string, ref: string) => `${NODES}${node}/status/${ref}`,
  orphansOf: (node: string) => `${NODES}${node}/orphans/`,
  orphan: (node: string, ref: string) => `${NODES}${node}/orphans/${ref}`,
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

/** The project every cluster has, and the one a request without a project means. */
export const DEFAULT_PROJECT = "default";

/** An instance's ref, "<project>/<name>" (an empty project is the default one). */
export function instanceRef(project: string, name: string): string {
  return `${project || DEFAULT_PROJECT}/${name}`;
}

/** The ref of an instance record (records from before projects have none: the default one). */
export function refOf(i: { readonly project: string; readonly name: string }): string {
  return instanceRef(i.project, i.name);
}

/** How lists show an instance: its name in the default project, "<project>/<name>" in another. */
export function displayRef(ref: string): string {
  const { project, name } = splitRef(ref);
  return project === DEFAULT_PROJECT ? name : ref;
}

/** A ref's two parts. */
export function splitRef(ref: string): { project: string; name: string } {
  const at = ref.indexOf("/");
  return at < 0 ? { project: DEFAULT_PROJECT, name: ref } : { project: ref.slice(0, at), name: ref.slice(at + 1) };
}

/**
 * The name an instance has on its node (a libvirt domain, a containerd container, its files):
 * "<name>" in the default project, "<project>.<name>" in another. Neither part holds a ".", so
 * it reads back one way (hostRef); instances made before projects keep their names.
 */
export function hostName(ref: string): string {
  const { project, name } = splitRef(ref);
  return project === DEFAULT_PROJECT ? name : `${project}.${name}`;
}

/** The ref of an instance by its name on a node. */
export function hostRef(host: string): string {
  const at = host.indexOf(".");
  return at < 0 ? instanceRef("", host) : instanceRef(host.slice(0, at), host.slice(at + 1));
}

/** The last path segment of a key. */
export function baseName(key: string): string {
  return key.slice(key.lastIndexOf("/") + 1);
}

/** The ref of a key under `prefix` ("<prefix><project>/<name>"), or undefined for another shape. */
export function refAfter(prefix: string, key: string): string | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const rest = key.slice(prefix.length);
  const p = rest.split("/");
  return p.length === 2 && p[0] && p[1] ? rest : undefined;
}

/** For assignments/<node>/<project>/<name>: [node, ref]. */
export function parseAssignmentKey(key: string): [string, string] | undefined {
  if (!key.startsWith(keys.assignments)) return undefined;
  const rest = key.slice(keys.assignments.length);
  const node = rest.slice(0, rest.indexOf("/"));
  const ref = node ? refAfter(`${node}/`, rest) : undefined;
  return node && ref ? [node, ref] : undefined;
}

/** What a key under nodes/<node>/ is; `ref` is "<project>/<name>". */
export type NodeKey = { node: string; kind: "record" | "alive" | "endpoint" } | { node: string; kind: "status" | "orphan"; ref: string };

/** Parses a key under nodes/; undefined for anything else (a key of a newer version, say). */
export function parseNodeKey(key: string): NodeKey | undefined {
  if (!key.startsWith(NODES)) return undefined;
  const p = key.slice(NODES.length).split("/");
  const node = p[0];
  if (!node) return undefined;
  if (p.length === 2 && (p[1] === "record" || p[1] === "alive" || p[1] === "endpoint")) return { node, kind: p[1] };
  if (p.length === 4 && p[2] && p[3] && (p[1] === "status" || p[1] === "orphans"))
    return { node, kind: p[1] === "status" ? "status" : "orphan", ref: `${p[2]}/${p[3]}` };
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
