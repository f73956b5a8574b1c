// The typed state layer: the keyspace, the codec of every record, the merged instance and node
// views, the one compare-and-swap update, and the placement transactions. Handlers, controllers
// and the agent reach the store through it.
export {
  baseName,
  DEFAULT_PROJECT,
  displayRef,
  hostName,
  hostRef,
  instanceRef,
  keys,
  refAfter,
  refOf,
  splitRef,
  parseAssignmentKey,
  parseNodeKey,
  ROOT,
  RESERVED_LABEL_PREFIX,
  RESTART_LABEL,
  STOP_TIMEOUT_LABEL,
  type NodeKey,
} from "./keys.js";
export { codecs, encodeAssignment, type Codec } from "./codecs.js";
export { ConflictError, MAX_ATTEMPTS, update, type Change, type Current, type Updated } from "./update.js";
export {
  allocationTotals,
  destroyedBy,
  instancePhase,
  merged,
  mergedNode,
  mergedPhase,
  phaseName,
  placedOn,
  requestOf,
  touch,
} from "./instance-view.js";
export { allocationOps, instanceOps, placeOps, removeOps, unplaceOps, type Read } from "./placement.js";
export { putNodeRecord, readEndpoint, setNodeFlags, withFlags } from "./nodes.js";
export { awaitClusterId, clusterId } from "./cluster-id.js";
export { listWatch, type ListWatchEvent, type ListWatchOptions } from "./list-watch.js";
export { commitJoin, createJoinToken, listJoinTokens, readJoinToken, readNodeBinding, updateJoinToken } from "./identity.js";
export { addUsage, hasQuota, overQuota, projectOps, usageOf, type Versioned } from "./projects.js";
export { migrateToProjects } from "./migrate.js";
