// The graphical console full window: noVNC scaled to the window (or 1:1), Ctrl-Alt-Del, text
// paste, and reconnection with backoff after an unexpected disconnect.
import { VncSession } from "../../../control_and_manage_plane/src/console/vnc-session.js";
import type { DesktopUi } from "./main.js";
import { Retry } from "./retry.js";

export function startVnc(ui: DesktopUi): void {
  ui.screen.dataset.testid = "vnc-canvas-container";
  let session: VncSession | undefined;
  let fit = true;
  const vncButtons = [ui.button("cad"), ui.button("paste")];
  const setConnected = (on: boolean) => vncButtons.forEach((b) => (b.disabled = !on));
  setConnected(false);

  const retry = new Retry({
    connect,
    show: (state, next) => {
      setConnected(state.phase === "connected");
      ui.show(state, next);
    },
  });

  function connect(): void {
    session?.close();
    const s = new VncSession({
      name: ui.instance,
      project: ui.project,
      target: ui.screen,
      scale: fit,
      // When the guest's display can change size (virtio-gpu with a driver that follows hints) it
      // takes the window's; otherwise QEMU declines and the picture is scaled.
      resizeSession: true,
      onState: (state) => {
        if (s !== session) return;
        retry.observe(state);
        if (state.phase === "connected") s.focus();
      },
    });
    session = s;
    void s.open();
  }

  ui.button("reconnect").addEventListener("click", () => retry.now());
  ui.button("cad").addEventListener("click", () => session?.ctrlAltDel());

  const fitButton = ui.button("fit");
  fitButton.addEventListener("click", () => {
    fit = !fit;
    fitButton.setAttribute("aria-pressed", String(fit));
    fitButton.textContent = fit ? "Fit to window" : "1:1";
    session?.setScale(fit);
    session?.focus();
  });

  const dialog = document.getElementById("paste-dialog") as HTMLDialogElement;
  const text = document.getElementById("paste-text") as HTMLTextAreaElement;
  const typeToo = document.getElementById("paste-type") as HTMLInputElement;
  ui.button("paste").addEventListener("click", () => {
    dialog.showModal();
    text.focus();
  });
  dialog.addEventListener("close", () => {
    const s = session;
    if (dialog.returnValue !== "send" || !s) return s?.focus();
    const value = text.value;
    // The clipboard reaches only guests with an agent; key presses reach any guest's focused
    // window (US layout). Both, unless the box is unchecked: pasting text where it is typed anyway.
    s.pasteToClipboard(value);
    if (typeToo.checked) void s.type(value);
    s.focus();
  });

  connect();
}
