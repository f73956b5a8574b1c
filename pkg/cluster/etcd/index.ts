// The Store contract on a real etcd v3 cluster: one pooled etcd3 client per store, TLS and
// username/password auth, etcd3's errors mapped to the store's typed errors.
export { EtcdStore, openEtcdStore, type EtcdStoreOptions } from "./etcd-store.js";
export { etcdOptions, etcdSchema, waitForStore, type EtcdSettings } from "./settings.js";
