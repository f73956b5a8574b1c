/*
 * Images in containerd's store, imported from OCI tarballs (no registry needed), the way
 * `ctr images import` does it, all through the API:
 *
 *   lease ──► every blob → content (GC labels: parent → children) ──► unpack each image's layers
 *   (Snapshots.Prepare → Diff.Apply → Commit, keyed by ChainID) ──► image records ──► lease gone
 *
 * The tarball is checked whole (layout, JSON, digests, sizes) before a byte is written, so a
 * malformed one leaves nothing behind; content written before a later failure is only held by the
 * lease and is collected when it is deleted.
 */
import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { type DriverImage, InvalidSpecError } from "../driver/index.js";
import { type Image, ImageSchema } from "./gen/containerd/services/images/v1/images_pb.js";
import { type ContainerdClient, isAlreadyExists, isNotFound } from "./client.js";
import { blobPath, chainIds, MediaType, readOciArchive, type Descriptor, type Unpack, hostPlatform } from "./oci.js";
import { TarIndex } from "./tar.js";

export const UNCOMPRESSED_LABEL = "containerd.io/uncompressed";
export const snapshotGcLabel = (snapshotter: string) => `containerd.io/gc.ref.snapshot.${snapshotter}`;

export async function importImageArchive(client: ContainerdClient, file: string, snapshotter: string): Promise<DriverImage[]> {
  const tar = await TarIndex.open(file);
  try {
    const archive = await readOciArchive(tar);
    return await client.withTemporaryLease(async (c) => {
      for (const { descriptor: d, labels } of archive.blobs) {
        const entry = tar.get(blobPath(d.digest))!;
        // A ref of its own: two imports of one image at once (two agents on one containerd, or
        // `--all`) would otherwise find the ref locked, and one's abort would end the other's ingest.
        const written = await c.writeContent(
          `hv-import-${randomBytes(6).toString("hex")}-${d.digest}`,
          { size: entry.size, read: (from, n) => tar.readRange(entry, from, n) },
          { expected: d.digest, labels },
        );
        // Already there (an earlier import): its GC references may be missing; set them.
        if (!written.created && Object.keys(labels).length) await setLabels(c, d.digest, labels);
      }
      const out: DriverImage[] = [];
      for (const image of archive.images) {
        await unpack(c, image.unpack, snapshotter);
        const record = create(ImageSchema, {
          name: image.name,
          target: { mediaType: image.target.mediaType, digest: image.target.digest, size: BigInt(image.target.size) },
        });
        await putImage(c, record);
        out.push({
          name: image.name,
          digest: image.target.digest,
          sizeBytes: imageSize(image.target, image.unpack),
          createdAt: Date.now(),
        });
      }
      return out;
    });
  } finally {
    await tar.close();
  }
}

/** Creates or updates the image record; a concurrent import creating it first is fine. */
async function putImage(c: ContainerdClient, record: Image): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await c.images.update({ image: record, updateMask: { paths: ["target"] } });
      return;
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
    try {
      await c.images.create({ image: record });
      return;
    } catch (e) {
      if (!isAlreadyExists(e) || attempt >= 3) throw e; // created meanwhile: update it
    }
  }
}

/** Layers into committed snapshots named by ChainID; the config blob then holds them against GC. */
async function unpack(c: ContainerdClient, u: Unpack, snapshotter: string): Promise<string> {
  const chain = chainIds(u.diffIds);
  for (let i = 0; i < u.layers.length; i++) {
    const name = chain[i]!;
    if (await snapshotExists(c, snapshotter, name)) continue;
    const key = `extract-${Date.now()}-${randomBytes(4).toString("hex")} ${name}`;
    const { mounts } = await c.snapshots.prepare({ snapshotter, key, parent: i ? chain[i - 1]! : "" });
    try {
      const layer = u.layers[i]!;
      const { applied } = await c.diff.apply({
        diff: { mediaType: layer.mediaType, digest: layer.digest, size: BigInt(layer.size) },
        mounts,
      });
      if (applied?.digest !== u.diffIds[i])
        throw new InvalidSpecError(
          `image archive: layer ${layer.digest} unpacks to ${applied?.digest ?? "nothing"}, the config says ${u.diffIds[i]}`,
        );
      try {
        await c.snapshots.commit({ snapshotter, name, key });
      } catch (e) {
        if (!isAlreadyExists(e)) throw e; // unpacked meanwhile by another import
        await c.snapshots.remove({ snapshotter, key });
      }
      await setLabels(c, layer.digest, { [UNCOMPRESSED_LABEL]: u.diffIds[i]! });
    } catch (e) {
      await c.snapshots.remove({ snapshotter, key }).catch(() => undefined);
      throw e;
    }
  }
  const top = chain.at(-1) ?? "";
  if (top) await setLabels(c, u.config.digest, { [snapshotGcLabel(snapshotter)]: top });
  return top;
}

async function snapshotExists(c: ContainerdClient, snapshotter: string, key: string): Promise<boolean> {
  try {
    await c.snapshots.stat({ snapshotter, key });
    return true;
  } catch (e) {
    if (isNotFound(e)) return false;
    throw e;
  }
}

async function setLabels(c: ContainerdClient, digest: string, labels: Record<string, string>): Promise<void> {
  await c.content.update({ info: { digest, labels }, updateMask: { paths: Object.keys(labels).map((k) => `labels.${k}`) } });
}

function imageSize(target: Descriptor, u: Unpack): number {
  const extra = target.digest === u.manifest.digest ? 0 : target.size;
  return extra + u.manifest.size + u.config.size + u.layers.reduce((n, l) => n + l.size, 0);
}

/** What running an image needs: its platform manifest's config (JSON) and the top snapshot. */
export interface ResolvedImage {
  name: string;
  digest: string;
  config: ImageConfig;
  /** ChainID of the top layer: the parent of a container's writable snapshot. */
  chainId: string;
  sizeBytes: number;
  createdAt?: number;
}

/** The parts of an OCI image config a container starts from. */
export interface ImageConfig {
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Env?: string[] | null;
  WorkingDir?: string;
  User?: string;
  Labels?: Record<string, string> | null;
}

/** An image by name, resolved for this platform; NotFound from containerd when there is none. */
export async function resolveImage(c: ContainerdClient, name: string): Promise<ResolvedImage> {
  const { image } = await c.images.get({ name });
  if (!image?.target) throw new Error(`image ${name} has no target`);
  let manifest: Descriptor = { mediaType: image.target.mediaType, digest: image.target.digest, size: Number(image.target.size) };
  if (manifest.mediaType === MediaType.OCI_INDEX || manifest.mediaType === MediaType.DOCKER_LIST) {
    const index = (await readJson(c, manifest.digest)) as {
      manifests?: (Descriptor & { platform?: { os?: string; architecture?: string } })[];
    };
    const p = hostPlatform();
    const m = (index.manifests ?? []).find((d) => !d.platform || (d.platform.os === p.os && d.platform.architecture === p.architecture));
    if (!m) throw new InvalidSpecError(`image: ${name} has no manifest for ${p.os}/${p.architecture}`);
    manifest = m;
  }
  const mf = (await readJson(c, manifest.digest)) as { config?: Descriptor; layers?: Descriptor[] };
  if (!mf.config) throw new Error(`image ${name}: manifest ${manifest.digest} has no config`);
  const cfg = (await readJson(c, mf.config.digest)) as { config?: ImageConfig; rootfs?: { diff_ids?: string[] } };
  const layers = mf.layers ?? [];
  const extra = manifest.digest === image.target.digest ? 0 : Number(image.target.size);
  return {
    name,
    digest: image.target.digest,
    config: cfg.config ?? {},
    chainId: chainIds(cfg.rootfs?.diff_ids ?? []).at(-1) ?? "",
    sizeBytes: extra + manifest.size + mf.config.size + layers.reduce((n, l) => n + l.size, 0),
    ...(image.createdAt ? { createdAt: Number(timestampMs(image.createdAt)) } : {}),
  };
}

export async function listImages(c: ContainerdClient): Promise<DriverImage[]> {
  const { images } = await c.images.list({});
  const out: DriverImage[] = [];
  for (const i of images) {
    try {
      const r = await resolveImage(c, i.name);
      out.push({ name: r.name, digest: r.digest, sizeBytes: r.sizeBytes, ...(r.createdAt ? { createdAt: r.createdAt } : {}) });
    } catch (e) {
      // An image whose content is incomplete (pulled by someone else, half-deleted): list what is known.
      if (!isNotFound(e)) throw e;
      out.push({ name: i.name, digest: i.target?.digest ?? "", sizeBytes: Number(i.target?.size ?? 0n) });
    }
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : 1));
}

async function readJson(c: ContainerdClient, digest: string): Promise<unknown> {
  const parts: Uint8Array[] = [];
  for await (const r of c.content.read({ digest })) parts.push(r.data);
  return JSON.parse(Buffer.concat(parts).toString("utf8")) as unknown;
}
