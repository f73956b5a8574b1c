/*
 * Baseline: raw put throughput against the same etcd, through the same Store client the control
 * plane uses, at the same concurrency. Every other figure is printed as a ratio to it, so a
 * slower or busier machine moves both numbers together.
 */
import type { Store } from "../pkg/cluster/store/index.js";

export interface Throughput {
  ops: number;
  seconds: number;
  perSecond: number;
}

export async function measurePuts(store: Store, count: number, concurrency: number, prefix = "/bench/raw/"): Promise<Throughput> {
  const value = new Uint8Array(256).fill(7); // about the size of an encoded Instance
  let next = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let i = next++; i < count; i = next++) await store.put(`${prefix}${i}`, value);
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await store.deletePrefix(prefix);
  return { ops: count, seconds, perSecond: count / seconds };
}
