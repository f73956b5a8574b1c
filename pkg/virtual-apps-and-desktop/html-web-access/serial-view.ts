// The serial console full window, in a terminal: for guests without a display and text-only VDI.
import { createTerminal, SerialSession } from "../../../control_and_manage_plane/src/console/serial-session.js";
import type { DesktopUi } from "./main.js";
import { Retry } from "./retry.js";

export function startSerial(ui: DesktopUi): void {
  ui.screen.dataset.testid = "serial-terminal";
  const terminal = createTerminal(ui.screen);
  let session: SerialSession | undefined;

  const retry = new Retry({ connect, show: (state, next) => ui.show(state, next) });

  function connect(): void {
    session?.close();
    const s = new SerialSession({
      name: ui.instance,
      project: ui.project,
      term: terminal.term,
      onState: (state) => {
        if (s === session) retry.observe(state);
      },
    });
    session = s;
    void s.open();
    terminal.term.focus();
  }

  ui.button("reconnect").addEventListener("click", () => retry.now());
  connect();
}
