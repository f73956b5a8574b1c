/**
 * A push/pull queue bridging listener callbacks to an async iterator. Its owner bounds it: `size`
 * says how much waits, and `fail` ends the iterator with an error once the queued items are
 * dropped (a consumer too far behind).
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiter: (() => void) | undefined;
  private closed = false;
  private error: Error | undefined;

  get size(): number {
    return this.items.length;
  }

  /** Drops what is queued and ends the iterator with `error`. */
  fail(error: Error): void {
    this.items = [];
    this.error = error;
    this.close();
  }

  push(item: T): void {
    if (this.closed) return;
    this.items.push(item);
    this.wake();
  }

  close(): void {
    this.closed = true;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      if (this.error !== undefined) throw this.error;
      if (this.items.length > 0) {
        const batch = this.items;
        this.items = [];
        yield* batch;
        continue;
      }
      if (this.closed) return;
      await new Promise<void>((r) => (this.waiter = r));
    }
  }
}
