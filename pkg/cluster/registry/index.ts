// Node registration and discovery: the agent-owned node record with the server-owned cordon flag
// (both written with compare-and-swap), and list-then-watch helpers over the store.
export {
  ConflictError,
  decodeNode,
  encodeNode,
  getNode,
  listNodes,
  NodeNotFoundError,
  registerNode,
  RegistryError,
  setCordoned,
  setNodeFlags,
  watchNodes,
  type NodeChange,
  type NodeRecord,
} from "./registry.js";
export { listWatch, type ListWatchEvent, type ListWatchOptions } from "./list-watch.js";
export { clusterId } from "./cluster-id.js";
