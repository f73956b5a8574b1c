/*
 * The interceptor on the browser's Connect transports: every call carries this tab's token as
 * `Authorization: Bearer <token>`, and an Unauthenticated answer (token expired, revoked, or none)
 * is announced to whoever listens (the app returns to its sign-in page with the server's message).
 *
 *   call ──► header set from storedToken() ──► server ──► answer
 *                                                  └─ Unauthenticated (at once, or ending a stream)
 *                                                       ──► forget the token ──► listeners(message)
 *
 * A call that sets its own Authorization header (the sign-in check of a pasted token) is left
 * alone: its refusal is its caller's to show.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { forgetToken, storedToken } from "./token.js";

type Listener = (message: string) => void;

const listeners = new Set<Listener>();

/** Calls `listener` with the server's message whenever a call is refused as Unauthenticated. */
export function onUnauthenticated(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export const bearer: Interceptor = (next) => async (req) => {
  if (req.header.has("authorization")) return next(req);
  const token = storedToken();
  if (token) req.header.set("authorization", `Bearer ${token}`);
  try {
    const res = await next(req);
    return res.stream ? { ...res, message: watched(res.message, token) } : res;
  } catch (e) {
    report(e, token);
    throw e;
  }
};

/** A stream's messages, with an Unauthenticated end reported like a unary refusal. */
async function* watched<T>(messages: AsyncIterable<T>, token: string): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (e) {
    report(e, token);
    throw e;
  }
}

function report(e: unknown, token: string): void {
  const err = ConnectError.from(e);
  if (err.code !== Code.Unauthenticated) return;
  // A refusal of a token this tab has since replaced (signed in again meanwhile) is old news.
  if (storedToken() !== token) return;
  forgetToken();
  for (const l of listeners) l(err.rawMessage);
}
