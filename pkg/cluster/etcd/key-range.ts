/** etcd's way of naming a prefix: the key, and the first key past every key that starts with it. */

/** key/range_end covering every key under prefix; "" is the whole keyspace, as in etcdctl. */
export function keyRange(prefix: string): { key: Buffer; range_end: Buffer } {
  if (prefix === "") return { key: Buffer.from([0]), range_end: Buffer.from([0]) };
  const key = Buffer.from(prefix);
  const end = Buffer.from(key);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return { key, range_end: end.subarray(0, i + 1) };
    }
  }
  return { key, range_end: Buffer.from([0]) };
}
