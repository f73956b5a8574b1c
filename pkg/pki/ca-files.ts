/*
 * The CA on disk: <dir>/ca.crt (0644) and <dir>/ca.key (0600) in a 0700 directory. Created by the
 * first server that finds none; every server after that (and a second replica given a copy of the
 * directory) loads it.
 *
 *   ca.key present? ──yes──► ca.crt present? ──yes──► check key mode, parse, match ──► CA
 *        │ no                     │ no (another server is between its two links)
 *        ▼                        └──► wait for ca.crt (bounded) ──► still none: CaFilesError
 *   create in memory, write both to temp files (0600 / 0644, fsynced)
 *        ▼
 *   link(tmp key, ca.key) ──EEXIST──► another server won: drop ours, load theirs (above)
 *        ▼ ok
 *   link(tmp crt, ca.crt), fsync the directory ──► CA
 *
 * link(2) fails if the target exists, so exactly one of two servers starting at once creates the
 * CA, and neither file is ever seen half-written (the content is complete before it gets its name).
 */
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { link, mkdir, open, readFile, unlink } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { type CertificateAuthority, createCa, type CreateCaOptions, parseCa } from "./certificates.js";
import { CaFilesError } from "./errors.js";

export const CA_CERT_FILE = "ca.crt";
export const CA_KEY_FILE = "ca.key";

export interface LoadOrCreateCaOptions extends CreateCaOptions {
  signal?: AbortSignal;
  /** How long to wait for the ca.crt of a server that has just linked ca.key (default 10 s). */
  waitForCertMs?: number;
}

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException | undefined)?.code;

/** Writes `data` to a new temp file beside its target, fsynced, and returns the temp path. */
export async function writeTemp(dir: string, base: string, data: string, mode: number): Promise<string> {
  const tmp = join(dir, `.${base}.${randomBytes(6).toString("hex")}.tmp`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode); // the umask may have narrowed it; 0644 for the certificate is meant
    await fh.sync();
  } finally {
    await fh.close();
  }
  return tmp;
}

export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Reads the key through one descriptor, checking that descriptor's mode: no window between check and read. */
export async function readKey(path: string): Promise<string> {
  const fh = await open(path, constants.O_RDONLY);
  try {
    const st = await fh.stat();
    if ((st.mode & 0o077) !== 0) {
      throw new CaFilesError(
        path,
        `mode ${(st.mode & 0o777).toString(8).padStart(4, "0")} lets group or others read this private key; chmod 0600 it`,
      );
    }
    return await fh.readFile("utf8");
  } finally {
    await fh.close();
  }
}

export async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    if (errno(e) === "ENOENT") return undefined;
    throw e;
  }
}

async function load(dir: string, opts: LoadOrCreateCaOptions): Promise<CertificateAuthority> {
  const keyPath = join(dir, CA_KEY_FILE);
  const certPath = join(dir, CA_CERT_FILE);
  const keyPem = await readKey(keyPath);
  const deadline = Date.now() + (opts.waitForCertMs ?? 10_000);
  let certPem = await readIfExists(certPath);
  while (certPem === undefined && Date.now() < deadline) {
    await sleep(50, undefined, { signal: opts.signal });
    certPem = await readIfExists(certPath);
  }
  if (certPem === undefined) {
    throw new CaFilesError(
      certPath,
      `is missing while ${CA_KEY_FILE} exists (a creation was interrupted?): restore it, or remove ${keyPath} to create a new ca`,
    );
  }
  try {
    return await parseCa(certPem, keyPem);
  } catch (e) {
    throw new CaFilesError(dir, e instanceof Error ? e.message : String(e));
  }
}

/** The CA in `dir`, created there (see the diagram) when there is none. */
export async function loadOrCreateCa(dir: string, opts: LoadOrCreateCaOptions = {}): Promise<CertificateAuthority> {
  opts.signal?.throwIfAborted();
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const keyPath = join(dir, CA_KEY_FILE);
  const certPath = join(dir, CA_CERT_FILE);
  try {
    return await load(dir, opts);
  } catch (e) {
    if (errno(e) !== "ENOENT") throw e;
  }
  if ((await readIfExists(certPath)) !== undefined) {
    throw new CaFilesError(
      keyPath,
      `is missing while ${CA_CERT_FILE} exists: copy the ca key from another server, or remove ${certPath} to create a new ca`,
    );
  }
  const made = await createCa(opts);
  opts.signal?.throwIfAborted();
  const tmpKey = await writeTemp(dir, CA_KEY_FILE, made.keyPem, 0o600);
  let tmpCert: string | undefined;
  try {
    tmpCert = await writeTemp(dir, CA_CERT_FILE, made.certPem, 0o644);
    try {
      await link(tmpKey, keyPath);
    } catch (e) {
      if (errno(e) === "EEXIST") return await load(dir, opts);
      throw e;
    }
    await link(tmpCert, certPath);
    await syncDir(dir);
  } finally {
    await unlink(tmpKey).catch(() => undefined);
    if (tmpCert) await unlink(tmpCert).catch(() => undefined);
  }
  return parseCa(made.certPem, made.keyPem);
}
