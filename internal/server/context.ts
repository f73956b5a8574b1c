/** What API handlers and controllers share inside one server process. */
import type { ApiTokenRecord, RoleBindingRecord } from "../../api/gen/hypervisor/v1/access_pb.js";
import type { ProjectRecord } from "../../api/gen/hypervisor/v1/project_pb.js";
import type { Instance } from "../../api/gen/hypervisor/v1/instance_pb.js";
import type { Node } from "../../api/gen/hypervisor/v1/node_pb.js";
import type { Allocation, NodeFlags } from "../../api/gen/hypervisor/v1/store_pb.js";
import type { Store } from "../../pkg/cluster/store/index.js";
import { keys, refOf } from "../../pkg/cluster/state/index.js";
import type { Logger } from "../../pkg/log/index.js";
import type { Informer } from "./informer.js";
import type { Algorithm } from "./scheduler.js";

export interface Informers {
  instances: Informer<Instance>;
  /** nodes/<node>/status/<project>/<name>: Instance records carrying only name, project, uid and status. */
  statuses: Informer<Instance>;
  /**
   * The nodes as the API shows them, by keys.node(name): each node's record with the servers'
   * flags merged in (derived from `records` and `flags`).
   */
  nodes: Informer<Node>;
  /** nodes/<node>/record, as the agent wrote it. */
  records: Informer<Node>;
  /** nodeflags/<node>: cordoned and draining. */
  flags: Informer<NodeFlags>;
  /** nodes/<node>/alive: presence means the agent's lease is alive. */
  alive: Informer<true>;
  allocations: Informer<Allocation>;
  /** assignments/<node>/<project>/<name>. */
  assignments: Informer<true>;
  /** apitokens/<id>: every API token (the authorizer's copy; secrets as hashes). */
  apiTokens: Informer<ApiTokenRecord>;
  /** rolebindings/<id>: every role binding (the authorizer's copy). */
  roleBindings: Informer<RoleBindingRecord>;
  /** projects/<name>. */
  projects: Informer<ProjectRecord>;
}

/** The status the agent of the instance's node reports for it, from the informers' copy. */
export function statusOf(informers: Pick<Informers, "statuses">, i: Instance): Instance | undefined {
  const node = i.status?.node ?? "";
  return node === "" ? undefined : informers.statuses.get(keys.status(node, refOf(i)))?.value;
}

import type { AgentClient } from "./agent-client.js";
import type { ClientLimits } from "./client-limits.js";

export interface ServerContext {
  /** Writes through it are tracked (writtenAt). */
  store: Store;
  /** Revision of this server's last put under a watched prefix: what a cached read waits for. */
  writtenAt: (prefix: string) => number;
  informers: Informers;
  log: Logger;
  serverId: string;
  version: string;
  /** The cluster's default scoring (--scheduler-algorithm). */
  algorithm: Algorithm;
  /** Current scheduler leader id ("" if unknown). */
  leader(): string;
  /** Component name → error message ("" = healthy). */
  componentHealth(): Record<string, string>;
  /** What one client may hold open or ask for repeatedly. */
  clientLimits: ClientLimits;
  /** The one client of the agents' AgentService (logs, images, orphan purges, consoles). */
  agents: AgentClient;
}
