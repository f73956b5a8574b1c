// One confirmation dialog for the whole app (rendered by App.vue): an action that cannot be undone
// awaits confirm(...) and goes ahead only on true.
import { reactive } from "vue";

export interface ConfirmRequest {
  headline: string;
  description: string;
  confirmText: string;
}

const none: ConfirmRequest = { headline: "", description: "", confirmText: "" };

export const confirmState = reactive({ open: false, request: none });

let pending: ((ok: boolean) => void) | undefined;

export function confirm(request: ConfirmRequest): Promise<boolean> {
  pending?.(false);
  confirmState.request = request;
  confirmState.open = true;
  return new Promise((resolve) => (pending = resolve));
}

export function settleConfirm(ok: boolean): void {
  confirmState.open = false;
  const p = pending;
  pending = undefined;
  p?.(ok);
}
