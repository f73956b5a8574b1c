/** The cluster keyspace (see ARCHITECTURE.md). One place builds and parses every key. */

export const ROOT = "/hypervisor/v1/";

export const keys = {
  nodes: `${ROOT}nodes/`,
  node: (name: string) => `${ROOT}nodes/${name}`,
  alivePrefix: `${ROOT}alive/`,
  alive: (node: string) => `${ROOT}alive/${node}`,
  instances: `${ROOT}instances/`,
  instance: (name: string) => `${ROOT}instances/${name}`,
  assignments: `${ROOT}assignments/`,
  assignmentsOf: (node: string) => `${ROOT}assignments/${node}/`,
  assignment: (node: string, name: string) => `${ROOT}assignments/${node}/${name}`,
  allocations: `${ROOT}allocations/`,
  allocation: (node: string) => `${ROOT}allocations/${node}`,
  statuses: `${ROOT}status/`,
  status: (name: string) => `${ROOT}status/${name}`,
  election: (name: string) => `${ROOT}election/${name}`,
  agent: (node: string) => `${ROOT}agents/${node}`,
  events: `${ROOT}events/`,
  consoleTicket: (hash: string) => `${ROOT}consoletickets/${hash}`,
  /** The cluster's identity (ClusterIdentity), written once at its first start. */
  cluster: `${ROOT}cluster`,
  orphans: `${ROOT}orphans/`,
  /** Instances a node keeps without an assignment there (Orphan), written by that node's agent. */
  orphansOf: (node: string) => `${ROOT}orphans/${node}/`,
  orphan: (node: string, name: string) => `${ROOT}orphans/${node}/${name}`,
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

/*
 * Labels through which the server tells agents what a spec cannot say. Label keys under the
 * reserved prefix are set by the system, never by users.
 */
export const RESERVED_LABEL_PREFIX = "hypervisor.io/";
/** Set by RestartInstance to the generation that asks for the restart. */
export const RESTART_LABEL = `${RESERVED_LABEL_PREFIX}restart-requested`;
/** Set by StopInstance when the user gave a timeout (seconds). */
export const STOP_TIMEOUT_LABEL = `${RESERVED_LABEL_PREFIX}stop-timeout-seconds`;
