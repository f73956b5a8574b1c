/*
 * A leaf certificate and its key kept in a directory as <base>.crt and <base>.key (both 0600,
 * written through a temp file, fsync and rename, so a crash leaves the old pair or the new one),
 * and when it is due for renewal: at two thirds of its life, as kubelet and k3s renew.
 */
import { X509Certificate } from "node:crypto";
import { mkdir, rename } from "node:fs/promises";
import { join } from "node:path";
import { readIfExists, readKey, syncDir, writeTemp } from "./ca-files.js";
import { CLOCK_SKEW_MS, type KeyAndCertificate } from "./certificates.js";

export interface LeafFiles extends KeyAndCertificate {
  cert: X509Certificate;
}

/** The pair <base>.crt/<base>.key in `dir`, or undefined when either is missing. */
export async function readLeaf(dir: string, base: string): Promise<LeafFiles | undefined> {
  const certPem = await readIfExists(join(dir, `${base}.crt`));
  if (certPem === undefined) return undefined;
  let keyPem: string;
  try {
    keyPem = await readKey(join(dir, `${base}.key`)); // refused when others can read it
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  return { certPem, keyPem, cert: new X509Certificate(certPem) };
}

/** Writes the pair, key first (a certificate never names a key that is not there yet). */
export async function writeLeaf(dir: string, base: string, pair: KeyAndCertificate): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (const [ext, data] of [
    ["key", pair.keyPem],
    ["crt", pair.certPem],
  ] as const) {
    const tmp = await writeTemp(dir, `${base}.${ext}`, data, 0o600);
    await rename(tmp, join(dir, `${base}.${ext}`));
  }
  await syncDir(dir);
}

/**
 * When a certificate should be renewed: two thirds into its life, counted from when it was issued
 * (its notBefore is backdated CLOCK_SKEW_MS for clocks a little behind, which is not life lived).
 */
export function renewAt(cert: X509Certificate): Date {
  const to = Date.parse(cert.validTo);
  const issued = Math.min(Date.parse(cert.validFrom) + CLOCK_SKEW_MS, to);
  return new Date(issued + ((to - issued) * 2) / 3);
}

/** Writes one private file (0600) atomically: temp file, fsync, rename, directory fsync. */
export async function writePrivateFile(dir: string, base: string, data: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = await writeTemp(dir, base, data, 0o600);
  await rename(tmp, join(dir, base));
  await syncDir(dir);
}

/** A file's text, or undefined when it does not exist. */
export const readTextIfExists = (path: string): Promise<string | undefined> => readIfExists(path);
