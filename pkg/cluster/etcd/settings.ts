/*
 * The etcd settings every binary shares (etcd-endpoints, etcd-ca-file, ...), turned into store
 * options, and the wait for etcd at start: boot order and restarts mean etcd may come up after us.
 */
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { ConfigError, type Schema } from "../../config/index.js";
import type { Logger } from "../../log/index.js";
import type { Store } from "../store/index.js";
import type { EtcdStoreOptions } from "./etcd-store.js";

/** The etcd settings of every binary that talks to etcd, as config keys (configs/*.yaml). */
export const etcdSchema = {
  "etcd-endpoints": {
    type: "string[]",
    default: ["http://127.0.0.1:2379"],
    description: "etcd client URLs, comma-separated (the server's with store: etcd)",
  },
  "etcd-ca-file": {
    type: "string",
    default: "",
    description: "CA certificate (PEM) to verify etcd; set: TLS, and the endpoints must be https://",
  },
  "etcd-cert-file": {
    type: "string",
    default: "",
    description: "client certificate (PEM) for etcd: with --client-cert-auth its CN is the etcd user (needs etcd-ca-file)",
  },
  "etcd-key-file": { type: "string", default: "", description: "the client certificate's key (PEM, 0600)" },
  "etcd-username": { type: "string", default: "", description: "etcd user by password; empty: none (a client certificate needs none)" },
  "etcd-password": {
    type: "string",
    default: "",
    description: "etcd password (config file or HYPERVISOR_ETCD_PASSWORD only: never a flag)",
    secret: true,
  },
  "etcd-password-file": {
    type: "string",
    default: "",
    description: "file whose first line is the etcd password (wins over etcd-password)",
  },
} satisfies Schema;

export interface EtcdSettings {
  etcdEndpoints: string[];
  etcdCaFile: string;
  etcdCertFile: string;
  etcdKeyFile: string;
  etcdUsername: string;
  etcdPassword: string;
  /** A file holding the password (its first line), so that it is in neither argv nor the config. */
  etcdPasswordFile: string;
}

/**
 * Settings to store options. Refuses (ConfigError naming the key) what would silently run with less
 * security than asked: a client certificate without a CA (so without TLS), half a key pair, a
 * plaintext endpoint with TLS set.
 */
export function etcdOptions(c: EtcdSettings): EtcdStoreOptions {
  const opts: EtcdStoreOptions = { endpoints: c.etcdEndpoints };
  if (c.etcdCertFile && !c.etcdKeyFile) throw new ConfigError("etcd-key-file: is required with etcd-cert-file", "etcd-key-file");
  if (c.etcdKeyFile && !c.etcdCertFile) throw new ConfigError("etcd-cert-file: is required with etcd-key-file", "etcd-cert-file");
  if (c.etcdCertFile && !c.etcdCaFile)
    throw new ConfigError("etcd-ca-file: is required with etcd-cert-file (the CA that signed etcd's certificate)", "etcd-ca-file");
  const plain = c.etcdEndpoints.find((e) => e.startsWith("http://"));
  if (c.etcdCaFile && plain)
    throw new ConfigError(`etcd-endpoints: ${JSON.stringify(plain)} is plaintext but etcd-ca-file is set: use https://`, "etcd-endpoints");
  if (c.etcdCaFile) {
    opts.tls = { caFile: c.etcdCaFile };
    if (c.etcdCertFile) opts.tls.certFile = c.etcdCertFile;
    if (c.etcdKeyFile) opts.tls.keyFile = c.etcdKeyFile;
  }
  if (c.etcdUsername) {
    opts.username = c.etcdUsername;
    opts.password = c.etcdPasswordFile ? readPasswordFile(c.etcdPasswordFile) : c.etcdPassword;
  }
  return opts;
}

function readPasswordFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new ConfigError(`etcd-password-file: cannot read ${JSON.stringify(path)}: ${(e as Error).message}`, "etcd-password-file");
  }
  const password = text.split(/\r?\n/)[0] ?? "";
  if (password === "") throw new ConfigError(`etcd-password-file: ${JSON.stringify(path)} is empty`, "etcd-password-file");
  return password;
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
