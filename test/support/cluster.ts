/*
 * A cluster as production runs it, for the e2e harnesses: etcd with TLS and client-certificate
 * auth whose certificates come from the cluster CA, servers that are etcd user hypervisor-server
 * and turn etcd's auth on, the API on TLS, and agents that join with a token (their node
 * certificate is then their etcd identity, confined by etcd to their own keys, and mutual TLS
 * carries logs, imports and consoles between server and agent).
 *
 *   loadOrCreateCa(pkiDir) ──► etcd (https, --client-cert-auth, server cert from that CA)
 *        │                        ▲
 *        └─► serverArgs: --pki-dir pkiDir, --etcd-* (CN hypervisor-server), --etcd-enable-auth
 *   ctl(...) over https with --ca-file; joinArgs(token): --server URL --join-token TOKEN
 *
 * Several servers given the same pkiDir share the CA, as a second server of a cluster does.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Interceptor } from "@connectrpc/connect";
import { promisify } from "node:util";
import { openEtcdStore, type EtcdStore } from "../../pkg/cluster/etcd/index.js";
import { loadOrCreateCa } from "../../pkg/pki/index.js";
import { startEtcd, type EtcdProcess } from "./etcd.js";
import { testCaIn } from "./pki.js";
import { binPath } from "./procs.js";

const run = promisify(execFile);

export interface SecureEtcd {
  etcd: EtcdProcess;
  /** The cluster CA's directory (ca.crt, ca.key): give it to every server as --pki-dir. */
  pkiDir: string;
  /** The cluster CA certificate: what ctl, browsers and etcd clients trust. */
  caFile: string;
  /** A server's store arguments: etcd over TLS as user hypervisor-server, auth turned on, the CA. */
  serverArgs: string[];
  /** A store as hypervisor-server (every key), for tests that look at or break the stored state. */
  openAsServer(): Promise<EtcdStore>;
  stop(): Promise<void>;
}

/** etcd on TLS with client-certificate auth, trusting the cluster CA made (or found) in `pkiDir`. */
export async function startSecureEtcd(pkiDir: string): Promise<SecureEtcd> {
  await loadOrCreateCa(pkiDir);
  const issueDir = join(pkiDir, "..", "etcd-pki");
  await mkdir(issueDir, { recursive: true, mode: 0o700 });
  const ca = testCaIn(pkiDir, issueDir);
  const etcd = await startEtcd({ tls: ca });
  const server = await ca.issue("hypervisor-server");
  const tls = { caFile: ca.caFile, certFile: server.certFile, keyFile: server.keyFile };
  return {
    etcd,
    pkiDir,
    caFile: ca.caFile,
    serverArgs: [
      ...["--store", "etcd", "--etcd-endpoints", etcd.endpoint, "--pki-dir", pkiDir],
      ...["--etcd-ca-file", tls.caFile, "--etcd-cert-file", tls.certFile, "--etcd-key-file", tls.keyFile, "--etcd-enable-auth"],
    ],
    openAsServer: () => openEtcdStore({ endpoints: [etcd.endpoint], tls }),
    stop: () => etcd.stop(),
  };
}

export interface Ctl {
  /** ctl's stdout; rejects with ctl's error (code, stderr) when it exits non-zero. */
  (...args: string[]): Promise<string>;
  /** The whole result. */
  raw(...args: string[]): Promise<{ stdout: string; stderr: string }>;
  /** The arguments that reach this server: --server URL --ca-file CA. */
  args: string[];
}

/**
 * hypervisor-ctl against `url` (https), trusting `caFile`, as the cluster's bootstrap admin: the
 * token the first server start wrote beside the CA (`admin-token`), passed in HYPERVISOR_TOKEN
 * (never on argv). `token` overrides it (another user's token).
 */
export function ctlFor(url: string | (() => string), caFile: string, timeoutMs = 300_000, token?: string): Ctl {
  const target = () => ["--server", typeof url === "string" ? url : url(), "--ca-file", caFile];
  const raw = (...args: string[]) => {
    const t = token ?? adminToken(caFile);
    return run(process.execPath, [binPath("hypervisor-ctl"), ...target(), ...args], {
      timeout: timeoutMs,
      env: { ...process.env, ...(t ? { HYPERVISOR_TOKEN: t } : {}) },
    });
  };
  const ctl = (async (...args: string[]) => (await raw(...args)).stdout) as Ctl;
  ctl.raw = raw;
  Object.defineProperty(ctl, "args", { get: target });
  return ctl;
}

/** The bootstrap admin token in the pki directory of `caFile` (empty when the server has not made it yet). */
export function adminToken(caFile: string): string {
  try {
    return readFileSync(join(dirname(caFile), "admin-token"), "utf8").trim();
  } catch {
    return "";
  }
}

/** The Authorization header of the bootstrap admin, for a test's own Connect clients and requests. */
export function adminHeaders(caFile: string): { authorization: string } {
  return { authorization: `Bearer ${adminToken(caFile)}` };
}

/** A Connect interceptor that sends the bootstrap admin token (read at each call: it may come later). */
export function asAdmin(caFile: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${adminToken(caFile)}`);
    return next(req);
  };
}

/** A join token for `uses` agents (any node name), made over the API from loopback. */
export async function joinToken(ctl: (...args: string[]) => Promise<string>, uses: number): Promise<string> {
  return (await ctl("join-token", "create", "--uses", String(uses), "--ttl", "1h")).trim();
}

/** An agent's arguments to join through the server at `url` with `token` (a restart needs none). */
export function joinArgs(url: string, token: string): string[] {
  return ["--server", url, "--join-token", token];
}
