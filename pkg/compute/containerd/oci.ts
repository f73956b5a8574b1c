/*
 * The OCI image layout inside an image tarball (what `docker save` 25+, `ctr images export` and
 * `skopeo copy oci-archive:` write), read into what an import needs:
 *
 *   index.json ──► named descriptors (io.containerd.image.name / org.opencontainers.image.ref.name)
 *        └─► index(es) ──► manifest for this platform ──► config (diff_ids) + layers
 *
 * Every blob reached is listed once, with the garbage-collection labels containerd wants on a
 * parent so the child outlives the import lease. Descriptors are checked against the archive: a
 * blob that is missing or has another size is an InvalidSpecError before anything is written.
 */
import { createHash } from "node:crypto";
import { InvalidSpecError } from "../driver/index.js";
import type { TarIndex } from "./tar.js";

export const MediaType = {
  OCI_INDEX: "application/vnd.oci.image.index.v1+json",
  OCI_MANIFEST: "application/vnd.oci.image.manifest.v1+json",
  DOCKER_LIST: "application/vnd.docker.distribution.manifest.list.v2+json",
  DOCKER_MANIFEST: "application/vnd.docker.distribution.manifest.v2+json",
} as const;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os?: string; architecture?: string; variant?: string };
}

export interface Blob {
  descriptor: Descriptor;
  /** Labels to set on the blob in the content store (gc references to its children). */
  labels: Record<string, string>;
}

/** What unpacking the image for this platform needs. */
export interface Unpack {
  manifest: Descriptor;
  config: Descriptor;
  layers: Descriptor[];
  /** Digests of the uncompressed layers, from the config's rootfs. */
  diffIds: string[];
}

export interface OciImage {
  name: string;
  /** What the image record points to (a manifest or an index). */
  target: Descriptor;
  unpack: Unpack;
}

export interface OciArchive {
  images: OciImage[];
  /** Every blob reachable from the named images, children before parents. */
  blobs: Blob[];
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
const NAME_RE =
  /^[a-z0-9]+([._-][a-z0-9]+)*(\.[a-z0-9-]+)*(:[0-9]+)?(\/[a-z0-9]+([._-]{1,2}[a-z0-9]+|-+[a-z0-9]+)*)*(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?$/;
const MAX_JSON = 4 << 20;

/** GOARCH names of this host, as platforms in image indexes use them. */
export function hostPlatform(): { os: string; architecture: string } {
  const arch = (
    { x64: "amd64", arm64: "arm64", arm: "arm", ppc64: "ppc64le", s390x: "s390x", riscv64: "riscv64" } as Record<string, string>
  )[process.arch];
  return { os: "linux", architecture: arch ?? process.arch };
}

export function blobPath(digest: string): string {
  if (!DIGEST_RE.test(digest)) throw new InvalidSpecError(`image archive: ${JSON.stringify(digest)} is not a sha256 digest`);
  return `blobs/sha256/${digest.slice("sha256:".length)}`;
}

/** ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n)); ChainID(0) = DiffID(0). */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const prev = out.at(-1);
    out.push(prev === undefined ? d : `sha256:${createHash("sha256").update(`${prev} ${d}`).digest("hex")}`);
  }
  return out;
}

export async function readOciArchive(tar: TarIndex, platform = hostPlatform()): Promise<OciArchive> {
  if (!tar.get("oci-layout")) {
    const docker = tar.get("manifest.json")
      ? " (a docker save from before Docker 25, without index.json, is not supported; re-export it with docker 25+ or `skopeo copy docker-archive:... oci-archive:...`)"
      : "";
    throw new InvalidSpecError(`image archive: no oci-layout file: not an OCI image layout${docker}`);
  }
  const layout = json<{ imageLayoutVersion?: string }>(await tar.read("oci-layout", MAX_JSON), "oci-layout");
  if (layout.imageLayoutVersion !== "1.0.0")
    throw new InvalidSpecError(`image archive: oci-layout version ${JSON.stringify(layout.imageLayoutVersion)} is not 1.0.0`);
  const index = json<{ manifests?: unknown }>(await tar.read("index.json", MAX_JSON), "index.json");
  const roots = descriptors(index.manifests, "index.json manifests");

  const blobs = new Map<string, Blob>();
  const images: OciImage[] = [];
  for (const root of roots) {
    const name = imageName(root);
    if (!name) continue;
    const unpack = await walk(tar, root, platform, blobs, `image ${name}`);
    images.push({ name, target: strip(root), unpack });
  }
  if (!images.length)
    throw new InvalidSpecError(
      "image archive: index.json names no image (annotation io.containerd.image.name or org.opencontainers.image.ref.name with a full reference)",
    );
  return { images, blobs: [...blobs.values()] };
}

/** The reference an index.json entry names, normalized as containerd stores it. */
function imageName(d: Descriptor): string | undefined {
  const full = d.annotations?.["io.containerd.image.name"] ?? d.annotations?.["org.opencontainers.image.ref.name"];
  if (!full) return undefined;
  // A bare tag ("latest") names no repository: not an image name on its own.
  if (!full.includes("/") && !full.includes(":") && !full.includes(".")) return undefined;
  if (!NAME_RE.test(full)) throw new InvalidSpecError(`image archive: ${JSON.stringify(full)} is not an image reference`);
  const [first] = full.split("/");
  const qualified =
    full.includes("/") && (first!.includes(".") || first!.includes(":") || first === "localhost")
      ? full
      : `docker.io/${full.includes("/") ? "" : "library/"}${full}`;
  return /:[\w][\w.-]*$/.test(qualified.split("/").pop()!) || qualified.includes("@") ? qualified : `${qualified}:latest`;
}

/** Records the blob and its children; resolves the manifest for `platform`. */
async function walk(
  tar: TarIndex,
  d: Descriptor,
  platform: { os: string; architecture: string },
  blobs: Map<string, Blob>,
  what: string,
): Promise<Unpack> {
  const body = await readBlob(tar, d, what);
  if (d.mediaType === MediaType.OCI_INDEX || d.mediaType === MediaType.DOCKER_LIST) {
    const children = descriptors(json<{ manifests?: unknown }>(body, what).manifests, `${what} manifests`);
    const labels: Record<string, string> = {};
    children.forEach((c, i) => (labels[`containerd.io/gc.ref.content.m.${i}`] = c.digest));
    const match = children.find((c) => !c.platform || (c.platform.os === platform.os && c.platform.architecture === platform.architecture));
    if (!match) throw new InvalidSpecError(`${what}: no manifest for ${platform.os}/${platform.architecture}`);
    // Only this platform's manifest is in the archive as a rule; the others are referenced only.
    const unpack = await walk(tar, match, platform, blobs, what);
    blobs.set(d.digest, { descriptor: strip(d), labels });
    return unpack;
  }
  if (d.mediaType !== MediaType.OCI_MANIFEST && d.mediaType !== MediaType.DOCKER_MANIFEST)
    throw new InvalidSpecError(`${what}: media type ${JSON.stringify(d.mediaType)} is not an image index or manifest`);
  const m = json<{ config?: unknown; layers?: unknown }>(body, what);
  const [config] = descriptors([m.config], `${what} config`);
  const layers = descriptors(m.layers ?? [], `${what} layers`);
  const cfg = json<{ rootfs?: { diff_ids?: unknown } }>(await readBlob(tar, config!, `${what} config`), `${what} config`);
  const diffIds = cfg.rootfs?.diff_ids;
  if (!Array.isArray(diffIds) || diffIds.length !== layers.length || !diffIds.every((x) => typeof x === "string" && DIGEST_RE.test(x)))
    throw new InvalidSpecError(`${what}: config rootfs.diff_ids must list one sha256 digest per layer (${layers.length})`);
  for (const l of layers) {
    await checkBlob(tar, l, `${what} layer`);
    blobs.set(l.digest, { descriptor: strip(l), labels: {} });
  }
  blobs.set(config!.digest, { descriptor: strip(config!), labels: {} });
  const labels: Record<string, string> = { "containerd.io/gc.ref.content.config": config!.digest };
  layers.forEach((l, i) => (labels[`containerd.io/gc.ref.content.l.${i}`] = l.digest));
  blobs.set(d.digest, { descriptor: strip(d), labels });
  return { manifest: strip(d), config: strip(config!), layers: layers.map(strip), diffIds: diffIds as string[] };
}

async function checkBlob(tar: TarIndex, d: Descriptor, what: string): Promise<void> {
  const e = tar.get(blobPath(d.digest));
  if (!e) throw new InvalidSpecError(`${what}: blob ${d.digest} is not in the archive`);
  if (e.size !== d.size) throw new InvalidSpecError(`${what}: blob ${d.digest} is ${e.size} bytes, its descriptor says ${d.size}`);
}

async function readBlob(tar: TarIndex, d: Descriptor, what: string): Promise<Buffer> {
  await checkBlob(tar, d, what);
  const body = await tar.read(blobPath(d.digest), MAX_JSON);
  const actual = `sha256:${createHash("sha256").update(body).digest("hex")}`;
  if (actual !== d.digest) throw new InvalidSpecError(`${what}: blob ${d.digest} has digest ${actual}`);
  return body;
}

function descriptors(v: unknown, what: string): Descriptor[] {
  if (!Array.isArray(v)) throw new InvalidSpecError(`image archive: ${what} is not a list`);
  return v.map((x, i) => {
    const d = x as Partial<Descriptor> | null;
    if (
      !d ||
      typeof d.mediaType !== "string" ||
      typeof d.digest !== "string" ||
      !DIGEST_RE.test(d.digest) ||
      !Number.isSafeInteger(d.size) ||
      d.size! < 0
    )
      throw new InvalidSpecError(`image archive: ${what}[${i}] is not a descriptor (mediaType, sha256 digest, size)`);
    return d as Descriptor;
  });
}

function strip(d: Descriptor): Descriptor {
  return { mediaType: d.mediaType, digest: d.digest, size: d.size, ...(d.annotations ? { annotations: d.annotations } : {}) };
}

function json<T>(b: Buffer, what: string): T {
  try {
    const v = JSON.parse(b.toString("utf8")) as unknown;
    if (!v || typeof v !== "object") throw new Error("not an object");
    return v as T;
  } catch (e) {
    throw new InvalidSpecError(`image archive: ${what} is not JSON: ${(e as Error).message}`);
  }
}
