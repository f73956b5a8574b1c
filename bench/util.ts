// What every benchmark needs: sizes from the environment, medians of rounds, and a bounded wait on a condition.

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Polls cond every everyMs until it holds; throws after timeoutMs. */
export async function waitUntil(cond: () => boolean, timeoutMs = 120_000, everyMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("bench: timed out waiting for the cluster");
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A positive integer setting from the environment (e.g. BENCH_INSTANCES), or `def`. */
export function envInt(name: string, def: number): number {
  const v = Number(process.env[name] ?? def);
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name}: ${process.env[name]} is not a positive integer`);
  return v;
}
