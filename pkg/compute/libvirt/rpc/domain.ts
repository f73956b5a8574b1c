/*
 * remote_nonnull_domain, the handle every domain procedure takes and most return. The daemon finds
 * the domain by name and UUID, so callers pass back exactly what a lookup gave them.
 */
import { XdrError, type XdrReader, type XdrWriter } from "./xdr.js";

export const UUID_LENGTH = 16;

export interface Domain {
  name: string;
  /** 16 raw bytes (not the dashed text form). */
  uuid: Buffer;
  /** The running domain's id, -1 while it is inactive. */
  id: number;
}

export function writeDomain(w: XdrWriter, d: Domain): void {
  w.string(d.name).fixedOpaque(d.uuid, UUID_LENGTH).i32(d.id);
}

export function readDomain(r: XdrReader): Domain {
  return { name: r.string(), uuid: r.fixedOpaque(UUID_LENGTH), id: r.i32() };
}

/** The dashed text form libvirt prints (virsh domuuid), e.g. for logs and XML. */
export function uuidString(uuid: Uint8Array): string {
  if (uuid.length !== UUID_LENGTH) throw new XdrError(`a UUID is ${UUID_LENGTH} bytes, got ${uuid.length}`);
  const h = Buffer.from(uuid).toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The 16 bytes of a dashed (or bare hex) UUID string. */
export function parseUuid(s: string): Buffer {
  const hex = s.replace(/-/g, "");
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new XdrError(`not a UUID: ${JSON.stringify(s)}`);
  return Buffer.from(hex, "hex");
}
