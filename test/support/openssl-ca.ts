/*
 * Throwaway certificate authorities for tests, made by the openssl CLI (argument vectors, never a
 * shell), ECDSA P-256. Independent of pkg/pki on purpose: a test of a TLS client should not trust
 * certificates made by the code under test.
 *
 *   newCa(dir, "a")          ──► a-ca.crt, a-ca.key        (self-signed, CA:TRUE, 1 day)
 *   ca.issue("srv", {...})   ──► srv.crt (signed by a), srv.key
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const exec = promisify(execFile);

async function openssl(args: string[]): Promise<void> {
  await exec("openssl", args);
}

export interface Issued {
  certFile: string;
  keyFile: string;
  certPem: string;
  keyPem: string;
}

export interface LeafOptions {
  /** Subject CN. */
  cn: string;
  /** subjectAltName entries, e.g. ["IP:127.0.0.1", "DNS:localhost"]. */
  san?: string[];
  /** extendedKeyUsage, e.g. ["serverAuth"] or ["clientAuth"]. */
  eku: string[];
}

export interface TestCa {
  readonly certFile: string;
  readonly keyFile: string;
  readonly certPem: string;
  /** A leaf certificate and its key, signed by this CA, files `<name>.crt` and `<name>.key` in the CA's dir. */
  issue(name: string, opts: LeafOptions): Promise<Issued>;
}

async function newKey(file: string): Promise<void> {
  await openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", file]);
}

/** A new CA in `dir`, files `<name>-ca.crt` and `<name>-ca.key`. */
export async function newCa(dir: string, name: string): Promise<TestCa> {
  const keyFile = join(dir, `${name}-ca.key`);
  const certFile = join(dir, `${name}-ca.crt`);
  await newKey(keyFile);
  // -addext on req: OpenSSL 3.0 (Debian 12) takes it there, not on `x509 -req`.
  await openssl([
    "req", "-x509", "-new", "-key", keyFile, "-sha256", "-days", "1", "-subj", `/CN=${name} test ca`,
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", certFile,
  ]); // prettier-ignore
  const certPem = await readFile(certFile, "utf8");
  return {
    certFile,
    keyFile,
    certPem,
    async issue(leaf: string, opts: LeafOptions): Promise<Issued> {
      const leafKey = join(dir, `${leaf}.key`);
      const csr = join(dir, `${leaf}.csr`);
      const ext = join(dir, `${leaf}.ext`);
      const leafCert = join(dir, `${leaf}.crt`);
      await newKey(leafKey);
      await openssl(["req", "-new", "-key", leafKey, "-subj", `/CN=${opts.cn}`, "-out", csr]);
      const lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature", `extendedKeyUsage=${opts.eku.join(",")}`];
      if (opts.san && opts.san.length > 0) lines.push(`subjectAltName=${opts.san.join(",")}`);
      await writeFile(ext, lines.join("\n") + "\n");
      await openssl([
        "x509", "-req", "-in", csr, "-CA", certFile, "-CAkey", keyFile, "-set_serial", `0x${randomBytes(15).toString("hex")}`,
        "-days", "1", "-sha256", "-extfile", ext, "-out", leafCert,
      ]); // prettier-ignore
      return { certFile: leafCert, keyFile: leafKey, certPem: await readFile(leafCert, "utf8"), keyPem: await readFile(leafKey, "utf8") };
    },
  };
}
