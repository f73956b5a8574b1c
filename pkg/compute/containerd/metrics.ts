/*
 * The few numbers we take from a task's cgroup metrics (Tasks.Metrics), decoded straight from the
 * protobuf wire format rather than through the whole cgroups schema:
 *
 *   io.containerd.cgroups.v1.Metrics  cpu=3 { usage=1 { total=1 (ns) } }
 *                                     memory=4 { usage=33 { limit=1, usage=2 } }
 *   io.containerd.cgroups.v2.Metrics  cpu=2 { usage_usec=1 }
 *                                     memory=4 { usage=32, usage_limit=33 }
 */
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import type { Any } from "@bufbuild/protobuf/wkt";

export interface TaskMetrics {
  cpuTimeNs: number;
  memoryUsedBytes: number;
  memoryLimitBytes: number;
}

/** Field number → value: varints as bigint, nested messages as their bytes. */
function fields(bytes: Uint8Array): Map<number, bigint | Uint8Array> {
  const out = new Map<number, bigint | Uint8Array>();
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, type] = r.tag();
    switch (type) {
      case WireType.Varint:
        out.set(no, BigInt(r.uint64()));
        break;
      case WireType.LengthDelimited:
        out.set(no, r.bytes());
        break;
      default:
        r.skip(type, no);
    }
  }
  return out;
}

const msg = (m: Map<number, bigint | Uint8Array>, no: number) => {
  const v = m.get(no);
  return fields(v instanceof Uint8Array ? v : new Uint8Array());
};
const num = (m: Map<number, bigint | Uint8Array>, no: number) => {
  const v = m.get(no);
  return typeof v === "bigint" ? Number(v) : 0;
};

/** undefined for a payload type this decoder does not know. */
export function decodeTaskMetrics(data: Any | undefined): TaskMetrics | undefined {
  if (!data) return undefined;
  const top = fields(data.value);
  if (data.typeUrl.endsWith("io.containerd.cgroups.v1.Metrics")) {
    const usage = msg(msg(top, 4), 33);
    // An unlimited cgroup v1 reports the largest page-aligned int64; no limit is 0 here.
    const limit = num(usage, 1);
    return { cpuTimeNs: num(msg(msg(top, 3), 1), 1), memoryUsedBytes: num(usage, 2), memoryLimitBytes: limit >= 2 ** 62 ? 0 : limit };
  }
  if (data.typeUrl.endsWith("io.containerd.cgroups.v2.Metrics")) {
    const memory = msg(top, 4);
    const limit = num(memory, 33);
    return { cpuTimeNs: num(msg(top, 2), 1) * 1000, memoryUsedBytes: num(memory, 32), memoryLimitBytes: limit >= 2 ** 62 ? 0 : limit };
  }
  return undefined;
}
