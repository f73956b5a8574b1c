/*
 * The web UI's files (the Vite build in dist/ui), served by hypervisor-server for the paths the
 * API does not answer. Given to Server as its `fallback`, so RPC paths, /metrics, /healthz and the
 * console WebSocket never reach it.
 *
 *   GET /assets/<name>-<hash>.<ext> ─► the file, cached a year (immutable: new content, new name)
 *   GET /desktop/...                ─► pkg/virtual-apps-and-desktop/html-web-access/index.html
 *   GET /<an existing file>         ─► the file, revalidated (ETag)
 *   GET /<anything else>            ─► control_and_manage_plane/index.html: the app's router decides
 *   other methods, /assets/<missing>, traversal ─► 404
 */
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { extname, resolve, sep } from "node:path";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import type { Handler } from "./http.js";

/** <repo>/dist/ui, from this module's place in dist/internal/server/. */
export const DEFAULT_UI_DIR = fileURLToPath(new URL("../../../dist/ui/", import.meta.url));

export const APP_INDEX = "control_and_manage_plane/index.html";
export const DESKTOP_INDEX = "pkg/virtual-apps-and-desktop/html-web-access/index.html";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".map": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".gif": "image/gif",
  ".webp": "image/webp",
  ".ico": "image/x-icon",
  ".woff": "font/woff",
  ".woff2": "font/woff2",
  ".ttf": "font/ttf",
  ".wasm": "application/wasm",
  ".txt": "text/plain; charset=utf-8",
};

// Vite names what it emits under assets/ "<name>-<8+ char hash>.<ext>".
const HASHED = /^\/assets\/.+-[A-Za-z0-9_-]{8,}\.[a-z0-9]+$/;

export interface StaticUiOptions {
  /** The build output to serve (default DEFAULT_UI_DIR). */
  dir?: string;
}

type Req = Parameters<Handler>[0];
type Res = Parameters<Handler>[1];

export interface StaticUi extends Handler {
  /** The directory served, resolved. */
  readonly dir: string;
}

export function staticUi(opts: StaticUiOptions = {}): StaticUi {
  const dir = resolve(opts.dir ?? DEFAULT_UI_DIR);
  const handler = (req: Req, res: Res) => {
    serve(dir, req, res).catch(() => {
      // The client went away mid-file, or the build was replaced under us: nothing to answer.
      if (!res.headersSent) reply(res, 500, "cannot read the web UI files\n");
      else res.destroy();
    });
  };
  return Object.assign(handler, { dir });
}

async function serve(dir: string, req: Req, res: Res): Promise<void> {
  if (req.method !== "GET" && req.method !== "HEAD") return reply(res, 404, "not found\n");
  let path: string;
  try {
    path = decodeURIComponent((req.url ?? "/").split("?")[0]!);
  } catch {
    return reply(res, 400, "malformed path\n");
  }
  if (path.includes("\0") || !path.startsWith("/")) return reply(res, 400, "malformed path\n");
  // An RPC path the router does not know (a newer client, a typo) must not get the app's HTML.
  if (/^\/[a-z0-9_]+(\.[a-z0-9_]+)+\.[A-Z]\w*\//.test(path)) return reply(res, 404, "not found\n");
  if (path === "/desktop") return redirect(res, "/desktop/");

  const file = inside(dir, path);
  if (file === undefined) return reply(res, 404, "not found\n");
  const found = await fileStat(file);
  if (found) return send(req, res, file, found, HASHED.test(path));
  if (path.startsWith("/assets/")) return reply(res, 404, "not found\n");

  const index = resolve(dir, path.startsWith("/desktop/") ? DESKTOP_INDEX : APP_INDEX);
  const indexStat = await fileStat(index);
  if (!indexStat) return reply(res, 404, `the web UI is not built (no ${index}): run make build\n`);
  return send(req, res, index, indexStat, false);
}

/** The file under dir that path names, or undefined when it would leave dir. */
function inside(dir: string, path: string): string | undefined {
  const file = resolve(dir, `.${path}`);
  return file === dir || file.startsWith(dir + sep) ? file : undefined;
}

async function fileStat(file: string): Promise<{ size: number; mtimeMs: number } | undefined> {
  try {
    const s = await stat(file);
    return s.isFile() ? s : undefined;
  } catch {
    return undefined;
  }
}

async function send(req: Req, res: Res, file: string, s: { size: number; mtimeMs: number }, immutable: boolean): Promise<void> {
  const etag = `"${s.size.toString(16)}-${Math.trunc(s.mtimeMs).toString(16)}"`;
  const headers = {
    "content-type": TYPES[extname(file).toLowerCase()] ?? "application/octet-stream",
    "cache-control": immutable ? "public, max-age=31536000, immutable" : "no-cache",
    etag,
    "x-content-type-options": "nosniff",
  };
  if (req.headers["if-none-match"] === etag) {
    res.writeHead(304, headers);
    res.end();
    return;
  }
  res.writeHead(200, { ...headers, "content-length": String(s.size) });
  if (req.method === "HEAD") {
    res.end();
    return;
  }
  await pipeline(createReadStream(file), res as NodeJS.WritableStream);
}

function reply(res: Res, status: number, text: string): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
  res.end(text);
}

function redirect(res: Res, location: string): void {
  res.writeHead(301, { location, "content-type": "text/plain; charset=utf-8" });
  res.end(`${location}\n`);
}
