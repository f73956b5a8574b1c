/*
 * Who may address this server by which name, and what a browser is told about its pages.
 *
 *   request ──Host (or :authority)──► an IP literal, or a name in allowed-hosts? ──no──► refused
 *      │                                   (DNS rebinding: a web page whose name resolves to
 *      │                                    127.0.0.1 would otherwise drive the whole API)
 *      └──Origin, if any──► same host and port as Host, or in allowed-origins? ──no──► refused
 *                               (cross-site requests, and the console WebSocket, which
 *                                browsers open without any CORS check)
 *
 * An IP literal cannot be rebound, so any is accepted as Host; names must be listed. The default
 * list is the loopback names, the listen address and this machine's hostname. Refusals are
 * PermissionDenied in the caller's protocol (Connect, gRPC, gRPC-Web) or a plain 403 elsewhere,
 * so no client sees a 5xx for it.
 *
 * Every answer carries nosniff and no-referrer; pages carry a Content-Security-Policy with
 * frame-ancestors 'none', except the desktop page (/desktop/), which may be framed by the origins
 * the operator names (a VDI portal). The pages may fetch from this server, and from the OIDC
 * issuer when there is one (the UI's sign-in discovers it and redeems its code there).
 */
import { isIP } from "node:net";
import { hostname } from "node:os";

import type { Handler } from "./http.js";

type Req = Parameters<Handler>[0];
type Res = Parameters<Handler>[1];

export interface OriginPolicyOptions {
  /** Host names (not IPs: any IP literal is accepted) clients may use; empty: the defaults. */
  allowedHosts: string[];
  /** Extra origins (scheme://host[:port]) whose pages may call the API and open consoles. */
  allowedOrigins: string[];
  /** Origins that may frame the desktop page; empty: none. */
  desktopFrameAncestors: string[];
  /** Origins pages may fetch from besides this server's (the OIDC issuer's); default none. */
  connectSources?: string[];
  /** The address the server listens on, added to the default hosts when it is a name. */
  listenHost: string;
}

export type Verdict = { ok: true } | { ok: false; message: string };

const LOOPBACK_NAMES = ["localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"];

/** Host names accepted when the operator names none. */
export function defaultAllowedHosts(listenHost: string): string[] {
  const names = [...LOOPBACK_NAMES, hostname().toLowerCase()];
  if (listenHost && isIP(listenHost) === 0) names.push(listenHost.toLowerCase());
  return [...new Set(names)];
}

/** "example.com:7070" → "example.com"; "[::1]:7070" → "::1"; undefined when malformed. */
export function hostOf(authority: string): string | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]/@\s]+))(?::(\d{1,5}))?$/.exec(authority.trim());
  if (!m) return undefined;
  return (m[1] ?? m[2] ?? "").toLowerCase().replace(/\.$/, "");
}

const CSP_BASE = [
  "default-src 'self'",
  "script-src 'self'",
  // MDUI and Vue set style attributes at run time.
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data: blob:",
  "font-src 'self' data:",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
];

export class OriginPolicy {
  private readonly hosts: Set<string>;
  private readonly origins: Set<string>;
  private readonly pageCsp: string;
  private readonly desktopCsp: string;

  constructor(opts: OriginPolicyOptions) {
    const hosts = opts.allowedHosts.length ? opts.allowedHosts : defaultAllowedHosts(opts.listenHost);
    this.hosts = new Set(hosts.map((h) => h.toLowerCase().replace(/\.$/, "")));
    this.origins = new Set(opts.allowedOrigins.map((o) => o.toLowerCase().replace(/\/$/, "")));
    // 'self' covers ws: and wss: to this host and port (consoles).
    const connect = ["connect-src 'self'", ...(opts.connectSources ?? [])].join(" ");
    this.pageCsp = [...CSP_BASE, connect, "frame-ancestors 'none'"].join("; ");
    const framers = opts.desktopFrameAncestors.length ? opts.desktopFrameAncestors.join(" ") : "'none'";
    this.desktopCsp = [...CSP_BASE, connect, `frame-ancestors ${framers}`].join("; ");
  }

  /** Whether a request with these headers may be served. */
  check(headers: Req["headers"]): Verdict {
    const authority = headers[":authority"] ?? headers.host;
    const value = Array.isArray(authority) ? authority[0] : authority;
    if (!value) return { ok: false, message: "the request names no host (Host header)" };
    const host = hostOf(value);
    if (host === undefined) return { ok: false, message: `host ${JSON.stringify(value.slice(0, 100))} is malformed` };
    if (isIP(host) === 0 && !this.hosts.has(host))
      return {
        ok: false,
        message: `host ${JSON.stringify(host.slice(0, 100))} is not in the server's allowed-hosts; an operator adds it there`,
      };
    const origin = headers.origin;
    if (origin === undefined) return { ok: true };
    if (this.sameOrigin(origin, value) || this.origins.has(origin.toLowerCase())) return { ok: true };
    return {
      ok: false,
      message: `origin ${JSON.stringify(origin.slice(0, 100))} is not this server's and not in allowed-origins`,
    };
  }

  private sameOrigin(origin: string, authority: string): boolean {
    let u: URL;
    try {
      u = new URL(origin);
    } catch {
      return false;
    }
    if (u.protocol !== "http:" && u.protocol !== "https:") return false;
    const defaultPort = u.protocol === "https:" ? "443" : "80";
    const m = /:(\d{1,5})$/.exec(authority.replace(/^\[[^\]]*\]/, ""));
    const port = m?.[1] ?? defaultPort;
    return hostOf(u.host) === hostOf(authority) && (u.port || defaultPort) === port;
  }

  /** Security headers for an answer to `path`. */
  headers(path: string): Record<string, string> {
    const desktop = path === "/desktop" || path.startsWith("/desktop/");
    return {
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
      "content-security-policy": desktop ? this.desktopCsp : this.pageCsp,
      ...(desktop ? {} : { "x-frame-options": "DENY" }),
    };
  }

  /** Answers a refused request in the protocol the client speaks; never a 5xx. */
  refuse(req: Req, res: Res, message: string): void {
    const type = String(req.headers["content-type"] ?? "");
    if (type.startsWith("application/grpc")) {
      // gRPC and gRPC-Web: a trailers-only answer, HTTP 200 with grpc-status 7 (PERMISSION_DENIED).
      res.writeHead(200, { "content-type": type.split(";")[0]!, "grpc-status": "7", "grpc-message": encodeURIComponent(message) });
      res.end();
      return;
    }
    if (/^application\/(connect\+)?(json|proto)/.test(type)) {
      res.writeHead(403, { "content-type": "application/json" });
      res.end(JSON.stringify({ code: "permission_denied", message }));
      return;
    }
    res.writeHead(403, { "content-type": "text/plain; charset=utf-8" });
    res.end(`${message}\n`);
  }
}
