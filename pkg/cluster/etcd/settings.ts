/*
 * The etcd settings every binary shares (etcd-endpoints, etcd-ca-file, ...), turned into store
 * options, and the wait for etcd at start: boot order and restarts mean etcd may come up after us.
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "../../log/index.js";
import type { Store } from "../store/index.js";
import type { EtcdStoreOptions } from "./etcd-store.js";

export interface EtcdSettings {
  etcdEndpoints: string[];
  etcdCaFile: string;
  etcdCertFile: string;
  etcdKeyFile: string;
  etcdUsername: string;
  etcdPassword: string;
}

export function etcdOptions(c: EtcdSettings): EtcdStoreOptions {
  const opts: EtcdStoreOptions = { endpoints: c.etcdEndpoints };
  if (c.etcdCaFile) {
    opts.tls = { caFile: c.etcdCaFile };
    if (c.etcdCertFile) opts.tls.certFile = c.etcdCertFile;
    if (c.etcdKeyFile) opts.tls.keyFile = c.etcdKeyFile;
  }
  if (c.etcdUsername) {
    opts.username = c.etcdUsername;
    opts.password = c.etcdPassword;
  }
  return opts;
}

/** Pings until the store answers; false when the signal aborted first. Logs the 1st and every 10th failure. */
export async function waitForStore(store: Store, endpoints: string[], log: Logger, signal: AbortSignal): Promise<boolean> {
  for (let attempt = 1; ; attempt++) {
    try {
      await store.ping({ signal });
      return true;
    } catch (e) {
      if (signal.aborted) return false;
      if (attempt === 1 || attempt % 10 === 0) log.warn({ endpoints, err: (e as Error).message }, "etcd not reachable yet; retrying");
      await sleep(1000, undefined, { signal }).catch(() => undefined);
    }
  }
}
