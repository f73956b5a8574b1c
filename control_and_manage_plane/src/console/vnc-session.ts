/*
 * One VNC console in an element: a ticket, then noVNC's RFB over the WebSocket. A session is one
 * connection; reconnecting is a new session (a new ticket, since tickets work once).
 *
 *   connecting ──ticket, WebSocket, RFB handshake──► connected ──VM stops / network / close──┐
 *        │                                                                                  ▼
 *        └──── no ticket (not Running, not found) or WebSocket refused ────────────► disconnected
 */
import RFB from "@novnc/novnc";
import { keystrokes, XK_SHIFT_L } from "./keysyms.js";
import { ConsoleKind, consoleUrl, failedState, type ConsoleState } from "./ticket.js";

export interface VncSessionOptions {
  /** The instance. */
  name: string;
  /** Its project; absent: "default". */
  project?: string;
  /** The element noVNC draws in; it must have a size. */
  target: HTMLElement;
  onState(state: ConsoleState): void;
  /** Scale the picture to the element (default true); false shows it 1:1. */
  scale?: boolean;
  /** Ask the guest to take the element's size when its display can (default false). */
  resizeSession?: boolean;
}

/** Pause between typed keys: QEMU's PS/2 queue drops keys that come faster than the guest reads. */
const TYPE_DELAY_MS = 15;

export class VncSession {
  private rfb: RFB | undefined;
  private closed = false;
  private connected = false;
  private failure: string | undefined;
  private readonly abort = new AbortController();

  constructor(private readonly opts: VncSessionOptions) {}

  /** Gets a ticket and connects; the outcome arrives through onState. */
  async open(): Promise<void> {
    this.opts.onState({ phase: "connecting" });
    let url: string;
    try {
      url = await consoleUrl(this.opts.name, ConsoleKind.VNC, { project: this.opts.project, signal: this.abort.signal });
    } catch (e) {
      if (!this.closed) this.opts.onState(failedState(e));
      return;
    }
    if (this.closed) return;
    const rfb = new RFB(this.opts.target, url, { wsProtocols: ["binary"], shared: true });
    rfb.scaleViewport = this.opts.scale ?? true;
    rfb.resizeSession = this.opts.resizeSession ?? false;
    rfb.background = "#000";
    rfb.addEventListener("connect", () => {
      this.connected = true;
      this.opts.onState({ phase: "connected" });
    });
    rfb.addEventListener("securityfailure", (e) => {
      this.failure = `VNC security negotiation failed: ${e.detail.reason ?? `status ${e.detail.status}`}`;
    });
    rfb.addEventListener("credentialsrequired", () => {
      this.failure = "the VNC server asks for credentials, which consoles do not have";
      rfb.disconnect();
    });
    rfb.addEventListener("disconnect", (e) => {
      this.rfb = undefined;
      if (this.closed) return;
      const reason =
        this.failure ??
        (!this.connected
          ? "the console was refused or not reachable (ticket used or expired, instance stopped, or the network)"
          : e.detail.clean
            ? "the VNC server closed the console"
            : "the console connection was lost");
      this.opts.onState({ phase: "disconnected", reason });
    });
    this.rfb = rfb;
  }

  /** Disconnects for good; no more state changes are reported. */
  close(): void {
    this.closed = true;
    this.abort.abort();
    this.rfb?.disconnect();
    this.rfb = undefined;
  }

  get isConnected(): boolean {
    return this.rfb !== undefined && this.connected;
  }

  ctrlAltDel(): void {
    this.rfb?.sendCtrlAltDel();
    this.rfb?.focus();
  }

  /** Fit the picture to the element (true) or show it 1:1 (false, scrollbars when larger). */
  setScale(scale: boolean): void {
    this.opts.scale = scale;
    if (this.rfb) this.rfb.scaleViewport = scale;
  }

  focus(): void {
    this.rfb?.focus();
  }

  /** Puts text on the guest's clipboard; only a guest with a clipboard agent (spice-vdagent) sees it. */
  pasteToClipboard(text: string): void {
    this.rfb?.clipboardPasteFrom(text);
  }

  /** Types text as key presses (see keysyms.ts); resolves when done or the session ends. */
  async type(text: string): Promise<void> {
    for (const k of keystrokes(text)) {
      const rfb = this.rfb;
      if (!rfb || this.closed) return;
      if (k.shift) rfb.sendKey(XK_SHIFT_L, null, true);
      rfb.sendKey(k.keysym, null, true);
      rfb.sendKey(k.keysym, null, false);
      if (k.shift) rfb.sendKey(XK_SHIFT_L, null, false);
      await new Promise((r) => setTimeout(r, TYPE_DELAY_MS));
    }
  }
}
