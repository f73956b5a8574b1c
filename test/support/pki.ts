/*
 * A throwaway certificate authority for tests, made with the openssl CLI (argument vectors, no
 * shell): ECDSA P-256, one day of validity, keys 0600 in a 0700 directory of its own. Test-only:
 * the cluster's real CA is pkg/pki; this stays small so that tests can switch to it.
 *
 *   makeTestCa() ──► ca.key + ca.crt (CA:TRUE)
 *   ca.issue("node:a") ──► node_a.key + node_a.crt (clientAuth, CN node:a)
 *   ca.issue("etcd", { server: true, ips: ["127.0.0.1"] }) ──► serverAuth + clientAuth, with SANs
 */
import { execFile } from "node:child_process";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface TestCert {
  /** PEM file paths. */
  certFile: string;
  keyFile: string;
}

export interface TestCa {
  dir: string;
  /** The CA certificate (PEM file path): what a peer trusts. */
  caFile: string;
  /** A leaf certificate whose subject CN is `cn`, signed by this CA. Same cn: same files, reissued. */
  issue(cn: string, opts?: { server?: boolean; ips?: string[]; dns?: string[] }): Promise<TestCert>;
  /** Removes the directory with every key in it. Idempotent. */
  remove(): Promise<void>;
}

/** A CA in a new temporary directory (or under `parent`). */
export async function makeTestCa(name = "hypervisor-test-ca", parent = tmpdir()): Promise<TestCa> {
  const dir = await mkdtemp(join(parent, "hv-pki-"));
  const caFile = join(dir, "ca.crt");
  const caKey = join(dir, "ca.key");
  try {
    await newKey(caKey);
    await openssl([
      "req", "-x509", "-new", "-key", caKey, "-sha256", "-days", "1", "-subj", `/CN=${name}`,
      "-addext", "basicConstraints=critical,CA:TRUE",
      "-addext", "keyUsage=critical,keyCertSign,cRLSign",
      "-out", caFile,
    ]); // prettier-ignore
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
  return caIn(dir, caFile, caKey);
}

/**
 * The CA whose ca.crt and ca.key are in `caDir` (the cluster CA a server made), issuing into
 * `dir`; remove() removes `dir` only.
 */
export function testCaIn(caDir: string, dir: string): TestCa {
  return caIn(dir, join(caDir, "ca.crt"), join(caDir, "ca.key"));
}

function caIn(dir: string, caFile: string, caKey: string): TestCa {
  return {
    dir,
    caFile,
    async issue(cn, opts = {}) {
      if (!/^[A-Za-z0-9:._-]+$/.test(cn)) throw new Error(`test ca: ${JSON.stringify(cn)} is not a plain common name`);
      const base = join(dir, cn.replace(/:/g, "_"));
      const cert = { certFile: `${base}.crt`, keyFile: `${base}.key` };
      await newKey(cert.keyFile);
      const sans = [...(opts.ips ?? []).map((ip) => `IP:${ip}`), ...(opts.dns ?? []).map((d) => `DNS:${d}`)];
      await openssl([
        "req", "-x509", "-new", "-key", cert.keyFile, "-CA", caFile, "-CAkey", caKey,
        "-sha256", "-days", "1", "-subj", `/CN=${cn}`,
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "keyUsage=critical,digitalSignature",
        // etcd's own gRPC gateway dials the server with the server's certificate: it is a client too.
        "-addext", `extendedKeyUsage=${opts.server ? "serverAuth,clientAuth" : "clientAuth"}`,
        ...(sans.length > 0 ? ["-addext", `subjectAltName=${sans.join(",")}`] : []),
        "-out", cert.certFile,
      ]); // prettier-ignore
      return cert;
    },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

async function newKey(path: string): Promise<void> {
  await openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path]);
  await chmod(path, 0o600);
}

async function openssl(args: string[]): Promise<void> {
  try {
    await run("openssl", args, { timeout: 30_000 });
  } catch (e) {
    const stderr = (e as { stderr?: string }).stderr ?? "";
    throw new Error(`openssl ${args[0]} failed: ${stderr.trim() || (e as Error).message}`);
  }
}
