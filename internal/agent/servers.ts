/*
 * The servers an agent talks to (setting `server`, one URL or several): joining, renewing its
 * certificate and asking about instances go to the one that answered last, and on to the next
 * when that one cannot be reached, so that one server down (a rolling upgrade, a lost machine)
 * never leaves a node unable to renew before its certificate lapses.
 *
 *   call(f) ──► f(last good) ──unreachable──► f(next) ──► ... ──► every one unreachable: the last error
 *                    └── any other answer or refusal: returned or thrown as it is
 */
import { Code, ConnectError } from "@connectrpc/connect";

export class ServerList {
  private good = 0;

  constructor(readonly urls: readonly string[]) {
    if (urls.length === 0) throw new Error("no server URL given");
  }

  /** The URL the next call tries first. */
  get current(): string {
    return this.urls[this.good]!;
  }

  async call<T>(f: (url: string) => Promise<T>, signal?: AbortSignal): Promise<T> {
    let last: unknown;
    for (let i = 0; i < this.urls.length; i++) {
      signal?.throwIfAborted();
      const at = (this.good + i) % this.urls.length;
      try {
        const res = await f(this.urls[at]!);
        this.good = at;
        return res;
      } catch (e) {
        if (signal?.aborted || !unreachable(e)) throw e;
        last = e;
      }
    }
    throw last;
  }
}

/** A transport failure (refused, reset, timed out, a TLS handshake that failed), not an answer. */
export function unreachable(e: unknown): boolean {
  const code = ConnectError.from(e).code;
  return code === Code.Unavailable || code === Code.DeadlineExceeded || code === Code.Unknown;
}
