/**
 * A hand-off from a producer to one async-iterating consumer (the request stream of a client
 * call): `send` resolves once the consumer has taken the item, so a producer that awaits it goes
 * no faster than the call sends, and with false once the consumer is gone, so it never waits for a
 * call that ended. Unlike AsyncQueue, nothing piles up behind a slow consumer.
 *
 *   producer ──send(x)──► queue ──next()──► consumer      send resolves true when x is taken
 *   producer ──end()───► the consumer finishes after what is queued
 *   consumer returns / close() ──► every pending and later send resolves false
 */
export class Channel<T> implements AsyncIterable<T> {
  private readonly queue: { item: T; taken: (ok: boolean) => void }[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;
  private closed = false;

  /** Resolves true once the consumer took `item`, false if it never will. */
  send(item: T): Promise<boolean> {
    if (this.closed || this.ended) return Promise.resolve(false);
    return new Promise((taken) => {
      this.queue.push({ item, taken });
      this.wake();
    });
  }

  /** No more items: the consumer finishes once it has taken the queued ones. */
  end(): void {
    this.ended = true;
    this.wake();
  }

  /** The consumer is gone (or must stop): queued items are dropped and their senders told. */
  close(): void {
    this.closed = true;
    for (const q of this.queue.splice(0)) q.taken(false);
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    try {
      for (;;) {
        if (this.closed) return;
        const next = this.queue.shift();
        if (next) {
          next.taken(true);
          yield next.item;
          continue;
        }
        if (this.ended) return;
        await new Promise<void>((r) => (this.waiter = r));
      }
    } finally {
      this.close();
    }
  }
}
