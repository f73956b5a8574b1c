/*
 * fetch() trusting one CA: Node's fetch takes no TLS options (its undici dispatcher is not ours to
 * import), and a private identity provider's certificate chains to a CA the system does not
 * trust. This speaks the part of fetch the OIDC libraries use (GET and POST, headers, a string
 * body, a signal, redirect "manual") over node:https with `ca`, which then is the only trust
 * anchor, as everywhere else in this codebase.
 */
import https from "node:https";

export interface FetchInit {
  method?: string;
  headers?: Record<string, string> | Headers | [string, string][];
  body?: string | URLSearchParams | null;
  signal?: AbortSignal | null;
}

/** A fetch-shaped function whose https requests verify the server against `ca` (PEM) only. */
export function fetchWithCa(ca: string): (url: string | URL, init?: FetchInit) => Promise<Response> {
  return (url, init = {}) =>
    new Promise<Response>((resolve, reject) => {
      const u = new URL(url);
      if (u.protocol !== "https:") return reject(new TypeError(`fetchWithCa: ${u.href} is not https`));
      const headers = Object.fromEntries(new Headers(init.headers ?? {}));
      const body = init.body === null || init.body === undefined ? undefined : String(init.body);
      const req = https.request(
        u,
        { method: init.method ?? "GET", headers, ca, ...(init.signal ? { signal: init.signal } : {}) },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", reject);
          res.on("end", () => {
            const h = new Headers();
            for (const [k, v] of Object.entries(res.headers)) {
              if (v === undefined) continue;
              for (const one of Array.isArray(v) ? v : [v]) h.append(k, one);
            }
            const status = res.statusCode ?? 502;
            // A Response with a body may not have a null-body status (204, 304).
            const nullBody = status === 204 || status === 304;
            resolve(new Response(nullBody ? null : Buffer.concat(chunks), { status, statusText: res.statusMessage ?? "", headers: h }));
          });
        },
      );
      req.on("error", reject);
      req.end(body);
    });
}
