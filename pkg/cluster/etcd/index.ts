// The Store contract on a real etcd v3 cluster: one pooled etcd3 client per store, TLS with client
// certificates (or username/password), etcd3's errors mapped to the store's typed errors, and
// etcd's users and roles that confine each node to its own keys.
export { EtcdStore, openEtcdStore, type EtcdStoreOptions } from "./etcd-store.js";
export { etcdOptions, etcdSchema, waitForStore, type EtcdSettings } from "./settings.js";
export {
  enableAuth,
  ETCD_SERVER_USER,
  etcdNodeUser,
  grantNode,
  grantUser,
  nodePermissions,
  revokeNode,
  type EtcdPermission,
} from "./auth.js";
export { InvalidNodeNameError } from "./errors.js";
