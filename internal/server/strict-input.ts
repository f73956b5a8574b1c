/*
 * Strict reading of every request, for every method of every service, before a handler sees it.
 * Connect and protobuf are lenient by design (open enums, unknown fields kept for forward
 * compatibility); an API that stores what it is sent must not be:
 *
 *   bytes ──► connect parses ──► strict check (this file) ──► handler
 *              │                   │
 *              │ JSON: unknown key or enum name → InvalidArgument (jsonOptions below)
 *              │ binary: malformed → InvalidArgument (connect says 500 internal; see rewrite below)
 *              │                   │
 *              │                   └ walks the message by reflection: an enum number the enum does
 *              │                     not declare, or a field the schema does not know ($unknown,
 *              │                     kept by the binary reader), anywhere in the message
 *              │                     (nested, repeated, maps) → InvalidArgument naming its path
 *
 * Everything comes from the descriptors, so a method added later is covered without thinking.
 */
import type { DescEnum, DescMessage, UnknownField } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type Interceptor, type StreamRequest } from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerResponse } from "@connectrpc/connect/protocol";
import { trailerFlag, trailerParse, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import { encodeEnvelope } from "@connectrpc/connect/protocol";

/** Options for connectNodeAdapter (or createRouterTransport): strict JSON, the check, the rewrite. */
export function strictInput(opts: { routes: (router: ConnectRouter) => void; interceptors?: Interceptor[] }) {
  return {
    routes: strictRoutes(opts.routes),
    interceptors: [...(opts.interceptors ?? []), strictInterceptor],
    // Connect's default ignores unknown JSON keys and turns unknown enum names into the default
    // value; protobuf's own default refuses both (InvalidArgument naming the key or the value).
    jsonOptions: { ignoreUnknownFields: false },
  };
}

/** Throws InvalidArgument for the first unknown field or undeclared enum number in `msg`. */
export function checkMessage(desc: DescMessage, msg: object, path = ""): void {
  const unknown = (msg as { $unknown?: UnknownField[] }).$unknown;
  if (unknown && unknown.length > 0) {
    const nos = [...new Set(unknown.map((u) => u.no))].sort((a, b) => a - b);
    throw new ConnectError(
      `${path || desc.typeName}: unknown field${nos.length > 1 ? "s" : ""} ${nos.join(", ")} (${desc.typeName} declares no field with ${nos.length > 1 ? "these numbers" : "this number"})`,
      Code.InvalidArgument,
    );
  }
  const m = msg as Record<string, unknown>;
  for (const f of desc.fields) {
    let value: unknown;
    if (f.oneof) {
      const o = m[f.oneof.localName] as { case?: string; value?: unknown } | undefined;
      if (o?.case !== f.localName) continue;
      value = o.value;
    } else value = m[f.localName];
    const name = path ? `${path}.${f.name}` : f.name;
    switch (f.fieldKind) {
      case "enum":
        checkEnum(f.enum, value, name);
        break;
      case "message":
        if (value !== undefined) checkMessage(f.message, value as object, name);
        break;
      case "list":
        (value as unknown[]).forEach((v, i) => {
          if (f.listKind === "enum") checkEnum(f.enum, v, `${name}[${i}]`);
          else if (f.listKind === "message") checkMessage(f.message, v as object, `${name}[${i}]`);
        });
        break;
      case "map":
        for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
          if (f.mapKind === "enum") checkEnum(f.enum, v, `${name}[${JSON.stringify(k)}]`);
          else if (f.mapKind === "message") checkMessage(f.message, v as object, `${name}[${JSON.stringify(k)}]`);
        }
        break;
      case "scalar":
        break;
    }
  }
}

function checkEnum(desc: DescEnum, value: unknown, field: string): void {
  if (typeof value === "number" && desc.value[value] === undefined)
    throw new ConnectError(`${field}: ${value} is not a ${desc.name}`, Code.InvalidArgument);
}

/**
 * Connect reports a body it cannot decode as `internal`: protobuf that does not parse, or an
 * envelope flagged compressed when no compression was negotiated. Both are the client's mistake;
 * returns the message to answer with InvalidArgument, or undefined for a real internal error.
 */
function clientFault(message: string): string | undefined {
  if (message.startsWith(PARSE_BINARY)) return `malformed request: ${message.slice(PARSE_BINARY.length)}`;
  if (message === UNNEGOTIATED_COMPRESSION) return `malformed request: ${message} (no compression was negotiated)`;
  return undefined;
}

const PARSE_BINARY = "parse binary: ";
const UNNEGOTIATED_COMPRESSION = "received compressed envelope, but do not know how to decompress";

function malformed(e: unknown): unknown {
  const fault = e instanceof ConnectError && e.code === Code.Internal ? clientFault(e.rawMessage) : undefined;
  return fault === undefined ? e : new ConnectError(fault, Code.InvalidArgument);
}

export const strictInterceptor: Interceptor = (next) => async (req) => {
  if (!req.stream) {
    checkMessage(req.method.input, req.message);
    return next(req);
  }
  // Streamed requests (and server-streaming ones, whose single message connect hands over as a
  // stream) are parsed as the handler reads them: check each message as it comes.
  const input = req.message;
  const checked: StreamRequest["message"] = (async function* () {
    try {
      for await (const m of input) {
        checkMessage(req.method.input, m);
        yield m;
      }
    } catch (e) {
      throw malformed(e);
    }
  })();
  return next({ ...req, message: checked });
};

/**
 * A unary request's body is parsed before any interceptor runs, and connect answers a malformed
 * binary body with `internal` (HTTP 500 for Connect, grpc-status 13 for gRPC and gRPC-Web). The
 * handlers are wrapped to turn exactly that answer into InvalidArgument.
 */
function strictRoutes(routes: (router: ConnectRouter) => void): (router: ConnectRouter) => void {
  return (router) => {
    routes(router);
    const handlers = router.handlers;
    for (let i = 0; i < handlers.length; i++) {
      const h = handlers[i]!;
      if (h.method.methodKind !== "unary") continue;
      handlers[i] = Object.assign(async (req: Parameters<UniversalHandler>[0]) => rewrite(protocolOf(req.header), await h(req)), h);
    }
  };
}

const GRPC_INTERNAL = "13";
const GRPC_INVALID_ARGUMENT = "3";

/** One handler serves the three protocols; the content type says which one a request speaks. */
function protocolOf(header: Headers): "connect" | "grpc" | "grpc-web" {
  const type = header.get("content-type") ?? "";
  if (type.startsWith("application/grpc-web")) return "grpc-web";
  if (type.startsWith("application/grpc")) return "grpc";
  return "connect";
}

async function rewrite(protocol: ReturnType<typeof protocolOf>, res: UniversalServerResponse): Promise<UniversalServerResponse> {
  if (protocol === "connect") {
    if (res.status !== 500 || !res.body || res.header?.get("content-encoding")) return res;
    const body = await collect(res.body);
    const err = parseJson(body) as { code?: string; message?: string } | undefined;
    const fault = err?.code === "internal" ? clientFault(err.message ?? "") : undefined;
    if (fault === undefined) return { ...res, body: once(body) };
    const fixed = new TextEncoder().encode(JSON.stringify({ code: "invalid_argument", message: fault }));
    res.header?.set("content-length", String(fixed.byteLength));
    return { ...res, status: 400, body: once(fixed) };
  }
  if (protocol === "grpc") {
    // The trailer is filled in when the call fails, which for a body that does not parse is
    // before the handler returns; it is checked again once the body ends to be sure.
    const fix = () => {
      const t = res.trailer;
      if (!t || t.get("grpc-status") !== GRPC_INTERNAL) return;
      const fault = clientFault(decodeURIComponent(t.get("grpc-message") ?? ""));
      if (fault === undefined) return;
      t.set("grpc-status", GRPC_INVALID_ARGUMENT);
      t.set("grpc-message", encodeURIComponent(fault));
    };
    fix();
    if (!res.body) return res;
    const body = res.body;
    return {
      ...res,
      body: (async function* () {
        yield* body;
        fix();
      })(),
    };
  }
  if (protocol === "grpc-web" && res.body) {
    // gRPC-Web carries the status in a trailer frame at the end of the body; a call that failed
    // on its input has nothing else in its body.
    const body = await collect(res.body);
    if (body.byteLength < 5 || body[0] !== trailerFlag) return { ...res, body: once(body) };
    const t = trailerParse(body.subarray(5));
    const fault = t.get("grpc-status") === GRPC_INTERNAL ? clientFault(decodeURIComponent(t.get("grpc-message") ?? "")) : undefined;
    if (fault === undefined) return { ...res, body: once(body) };
    t.set("grpc-status", GRPC_INVALID_ARGUMENT);
    t.set("grpc-message", encodeURIComponent(fault));
    return { ...res, body: once(encodeEnvelope(trailerFlag, trailerSerialize(t))) };
  }
  return res;
}

async function collect(body: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const p of body) parts.push(p);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

async function* once(bytes: Uint8Array): AsyncIterable<Uint8Array> {
  yield bytes;
}

function parseJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return undefined;
  }
}
