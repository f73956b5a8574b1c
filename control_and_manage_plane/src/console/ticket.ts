/*
 * Opening a console from the browser: a single-use ticket from ConsoleService (valid 30 s), then
 * a WebSocket on the path it names, same origin as the page.
 *
 *   consoleUrl(name, kind, {project}) ──CreateConsoleTicket──► {ticket, path: /console/<ticket>}
 *                                     ◄── ws(s)://<host>/console/<ticket>   (open it at once; it works once)
 *
 * A refused WebSocket (ticket used or expired, instance gone) shows in the browser only as a close
 * before the open, without the HTTP status: callers ask for a new ticket on every attempt.
 *
 * The ticket is what the tab's API token buys (CreateConsoleTicket needs instances:console): the
 * WebSocket itself carries no credentials (a browser cannot set its headers), only the ticket.
 *
 * This folder holds the consoles of the management UI (VncConsole.vue, SerialConsole.vue) and of
 * the desktop page (pkg/virtual-apps-and-desktop/html-web-access). It has no index.ts on purpose:
 * modules are imported by path so that a page showing VNC does not load xterm.js, nor serial noVNC.
 */
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { ConsoleKind, ConsoleService } from "../../../api/gen/hypervisor/v1/console_pb.js";
import { bearer } from "../auth/index.js";

export { ConsoleKind };

/** Where a console connection is; the same shape for VNC and serial. */
export interface ConsoleState {
  phase: "connecting" | "connected" | "disconnected";
  /** Why it is disconnected (or what it is waiting for), in words for the user. */
  reason?: string;
  /** Set when retrying cannot help (no such instance, a bad name): reconnect only on request. */
  final?: boolean;
}

/** Thrown by consoleUrl when no ticket was issued; `final` when asking again cannot help. */
export class TicketError extends Error {
  override name = "TicketError";
  constructor(
    message: string,
    readonly code: Code,
    readonly final: boolean,
  ) {
    super(message);
  }
}

// Retrying does not fix these; FailedPrecondition (not Running yet) and Unavailable may pass.
const FINAL = new Set([Code.NotFound, Code.InvalidArgument, Code.PermissionDenied, Code.Unauthenticated, Code.Unimplemented]);

let defaultClient: Client<typeof ConsoleService> | undefined;

/** The WebSocket URL of a new console of instance `name` (of `opts.project`, else "default"), same origin as the page. */
export async function consoleUrl(
  name: string,
  kind: ConsoleKind,
  opts: { project?: string | undefined; transport?: Transport; signal?: AbortSignal } = {},
): Promise<string> {
  const client = opts.transport
    ? createClient(ConsoleService, opts.transport)
    : (defaultClient ??= createClient(ConsoleService, createConnectTransport({ baseUrl: location.origin, interceptors: [bearer] })));
  try {
    const { path } = await client.createConsoleTicket({ name, kind, project: opts.project ?? "" }, { signal: opts.signal });
    return webSocketUrl(path);
  } catch (e) {
    const ce = ConnectError.from(e);
    throw new TicketError(ce.rawMessage, ce.code, FINAL.has(ce.code));
  }
}

/** ws(s)://<this page's host><path>: wss under https so that the browser allows it. */
export function webSocketUrl(path: string, loc: Pick<Location, "protocol" | "host"> = location): string {
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}${path}`;
}

/** The state to show for a failure to get a ticket or to connect. */
export function failedState(e: unknown): ConsoleState {
  if (e instanceof TicketError) return { phase: "disconnected", reason: e.message, final: e.final };
  return { phase: "disconnected", reason: e instanceof Error ? e.message : String(e) };
}

/** What a console component shows for its state. */
export function stateLabel(state: ConsoleState): string {
  switch (state.phase) {
    case "connecting":
      return "Connecting…";
    case "connected":
      return "Connected";
    default:
      return state.reason ? `Disconnected: ${state.reason}` : "Disconnected";
  }
}
