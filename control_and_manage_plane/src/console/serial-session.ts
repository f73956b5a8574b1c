/*
 * One serial console in an xterm.js terminal: a ticket, then a WebSocket carrying the raw bytes
 * of the guest's serial port both ways (binary frames; what is typed goes out as UTF-8).
 *
 *   connecting ──ticket, WebSocket open──► connected ──VM stops / network / close──► disconnected
 *        └──── no ticket or WebSocket refused ──────────────────────────────────────┘
 */
import { FitAddon } from "@xterm/addon-fit";
import { Terminal, type IDisposable } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";
import { ConsoleKind, consoleUrl, failedState, type ConsoleState } from "./ticket.js";

export interface ConsoleTerminal {
  term: Terminal;
  /** Fits the terminal to its element again (it also follows the element's size by itself). */
  fit(): void;
  dispose(): void;
}

/** An xterm.js terminal in `el`, sized to it and following its size. */
export function createTerminal(el: HTMLElement): ConsoleTerminal {
  const term = new Terminal({
    cursorBlink: true,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    scrollback: 5000,
    theme: { background: "#000000" },
  });
  const fitAddon = new FitAddon();
  term.loadAddon(fitAddon);
  term.open(el);
  const fit = () => {
    // Hidden (zero-sized) elements have no dimensions to fit to.
    if (el.clientWidth > 0 && el.clientHeight > 0) fitAddon.fit();
  };
  fit();
  const observer = new ResizeObserver(fit);
  observer.observe(el);
  return {
    term,
    fit,
    dispose() {
      observer.disconnect();
      term.dispose();
    },
  };
}

export interface SerialSessionOptions {
  name: string;
  /** Its project; absent: "default". */
  project?: string;
  term: Terminal;
  onState(state: ConsoleState): void;
}

export class SerialSession {
  private ws: WebSocket | undefined;
  private input: IDisposable[] = [];
  private closed = false;
  private readonly abort = new AbortController();
  private readonly encoder = new TextEncoder();

  constructor(private readonly opts: SerialSessionOptions) {}

  /** Gets a ticket and connects; the outcome arrives through onState. */
  async open(): Promise<void> {
    this.opts.onState({ phase: "connecting" });
    let url: string;
    try {
      url = await consoleUrl(this.opts.name, ConsoleKind.SERIAL, { project: this.opts.project, signal: this.abort.signal });
    } catch (e) {
      if (!this.closed) this.opts.onState(failedState(e));
      return;
    }
    if (this.closed) return;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.opts.onState({ phase: "connected" });
    };
    ws.onmessage = (ev: MessageEvent<ArrayBuffer | string>) => {
      this.opts.term.write(typeof ev.data === "string" ? ev.data : new Uint8Array(ev.data));
    };
    ws.onclose = () => {
      this.stopInput();
      this.ws = undefined;
      if (this.closed) return;
      this.opts.onState({
        phase: "disconnected",
        reason: opened
          ? "the serial console was closed (instance stopped, or another console took the port)"
          : "the console was refused or not reachable (ticket used or expired, instance stopped, or the network)",
      });
    };
    const send = (bytes: Uint8Array) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(bytes);
    };
    this.input = [
      this.opts.term.onData((d) => send(this.encoder.encode(d))),
      // Some mouse reports are bytes, not text.
      this.opts.term.onBinary((d) => send(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff))),
    ];
    this.ws = ws;
  }

  /** Disconnects for good; no more state changes are reported. */
  close(): void {
    this.closed = true;
    this.abort.abort();
    this.stopInput();
    this.ws?.close();
    this.ws = undefined;
  }

  private stopInput(): void {
    for (const d of this.input) d.dispose();
    this.input = [];
  }
}
