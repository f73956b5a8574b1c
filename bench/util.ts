// What every benchmark needs: medians of rounds, and a bounded wait on a condition.

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
