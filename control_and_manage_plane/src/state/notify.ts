// Errors and confirmations as Material snackbars, one at a time (queued), so a burst of failures
// does not pile up over the page.
import { snackbar } from "mdui/functions/snackbar.js";
import { errorText } from "../api/index.js";

export function notify(message: string): void {
  snackbar({ message, placement: "bottom", queue: "app", closeable: true, autoCloseDelay: 5000 });
}

/** "<what> failed: <server's message>", kept open until closed: errors deserve reading. */
export function notifyError(what: string, e: unknown): void {
  snackbar({ message: `${what}: ${errorText(e)}`, placement: "bottom", queue: "app", closeable: true, autoCloseDelay: 0, messageLine: 2 });
}
