/*
 * The HTML5 desktop page: one instance's console, full window. /desktop/?instance=<name>[&project=<p>] shows the
 * graphical console (noVNC); &kind=serial shows the serial console in a terminal instead. The
 * console code (tickets, sessions) is the management UI's (control_and_manage_plane/src/console).
 *
 * Tickets need the tab's API token (control_and_manage_plane/src/auth): a tab signed in to the
 * management UI has it already (same origin, same tab); otherwise, or when the server refuses it
 * (expired, revoked), the page asks for one and connects again once WhoAmI accepts it.
 */
import { ConnectError } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { bearer, onUnauthenticated, signInWith, storedToken } from "../../../control_and_manage_plane/src/auth/index.js";
import type { ConsoleState } from "../../../control_and_manage_plane/src/console/ticket.js";
import "./desktop.css";

export interface DesktopUi {
  instance: string;
  /** The instance's project ("default" when the link names none). */
  project: string;
  screen: HTMLElement;
  button(id: "cad" | "paste" | "fit" | "reconnect"): HTMLButtonElement;
  /** Shows the console's state in the bar (and in data-state, for tests). */
  show(state: ConsoleState, nextAttemptAt?: number): void;
}

const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function element<T extends HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el as T;
}

function fail(message: string): void {
  const status = element("status");
  status.textContent = message;
  status.dataset.state = "disconnected";
  for (const b of document.querySelectorAll("#bar button")) (b as HTMLButtonElement).disabled = true;
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = message;
  element("screen").append(p);
}

/** Resolves the wait of askForToken; set while the sign-in dialog is open. */
let signedIn: (() => void) | undefined;
let signingIn: Promise<void> | undefined;

/** Shows the sign-in dialog (with why, if the server said) until a token is accepted. */
function askForToken(reason: string): Promise<void> {
  const dialog = element<HTMLDialogElement>("signin-dialog");
  element("signin-error").textContent = reason;
  signingIn ??= new Promise<void>((resolve) => (signedIn = resolve));
  if (!dialog.open) dialog.showModal();
  element<HTMLInputElement>("signin-token").focus();
  return signingIn;
}

function wireSignIn(): void {
  const dialog = element<HTMLDialogElement>("signin-dialog");
  const form = element<HTMLFormElement>("signin-form");
  const input = element<HTMLInputElement>("signin-token");
  const submit = element<HTMLButtonElement>("signin-submit");
  const error = element("signin-error");
  const transport = createConnectTransport({ baseUrl: location.origin, interceptors: [bearer] });
  dialog.addEventListener("cancel", (e) => e.preventDefault()); // no console without a token
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submit.disabled = true;
    signInWith(transport, input.value).then(
      () => {
        input.value = "";
        submit.disabled = false;
        dialog.close();
        const done = signedIn;
        signedIn = undefined;
        signingIn = undefined;
        done?.();
      },
      (err: unknown) => {
        error.textContent = ConnectError.from(err).rawMessage;
        submit.disabled = false;
      },
    );
  });
}

async function start(): Promise<void> {
  const params = new URLSearchParams(location.search);
  const instance = params.get("instance") ?? "";
  const kind = params.get("kind") ?? "vnc";
  if (!NAME_RE.test(instance)) return fail(`instance=${JSON.stringify(instance)}: the page needs ?instance=<name> (a DNS label)`);
  const project = params.get("project") || "default";
  if (!NAME_RE.test(project)) return fail(`project=${JSON.stringify(project)}: not a project name (a DNS label)`);
  if (kind !== "vnc" && kind !== "serial") return fail(`kind=${JSON.stringify(kind)} must be vnc or serial`);
  const shown = project === "default" ? instance : `${project}/${instance}`;
  document.title = `${shown} · ${kind === "serial" ? "serial console" : "desktop"}`;
  element("title").textContent = shown;

  const status = element("status");
  let countdown: ReturnType<typeof setInterval> | undefined;
  const ui: DesktopUi = {
    instance,
    project,
    screen: element("screen"),
    button: (id) => element<HTMLButtonElement>(id),
    show(state, nextAttemptAt) {
      if (countdown !== undefined) clearInterval(countdown);
      countdown = undefined;
      status.dataset.state = state.phase;
      const render = () => {
        let text = state.phase === "connecting" ? "Connecting…" : state.phase === "connected" ? "Connected" : "Disconnected";
        if (state.reason) text += `: ${state.reason}`;
        if (nextAttemptAt !== undefined) text += ` (retrying in ${Math.max(0, Math.ceil((nextAttemptAt - Date.now()) / 1000))} s)`;
        status.textContent = text;
        status.title = text;
      };
      render();
      if (nextAttemptAt !== undefined) countdown = setInterval(render, 1000);
    },
  };
  wireSignIn();
  // A refused token ends the console (a final state, no retry): sign in again, then reconnect.
  onUnauthenticated((message) => void askForToken(message).then(() => ui.button("reconnect").click()));
  if (!storedToken()) {
    ui.show({ phase: "connecting", reason: "waiting for an API token" });
    await askForToken("");
  }
  // Each view is its own chunk: the serial page does not load noVNC, nor the desktop xterm.js.
  if (kind === "serial") {
    document.body.classList.add("serial");
    (await import("./serial-view.js")).startSerial(ui);
  } else {
    (await import("./vnc-view.js")).startVnc(ui);
  }
}

start().catch((e: unknown) => fail(`the page failed to start: ${e instanceof Error ? e.message : String(e)}`));
