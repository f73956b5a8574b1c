// v-field-error="message": shows a message as the MDUI field's own error text (red outline and
// supporting text under the input), the way Material shows a field that needs fixing.
import type { Directive } from "vue";

interface Validatable extends HTMLElement {
  setCustomValidity(message: string): void;
  updateComplete?: Promise<unknown>;
}

async function show(el: Validatable, message: string | undefined): Promise<void> {
  // MDUI renders its inner <input> asynchronously; it must exist before validity can be set.
  await el.updateComplete;
  el.setCustomValidity(message ?? "");
  if (message) el.dataset.error = message;
  else delete el.dataset.error;
}

export const vFieldError: Directive<Validatable, string | undefined> = {
  mounted(el, binding) {
    if (binding.value) void show(el, binding.value);
  },
  updated(el, binding) {
    if (binding.value !== binding.oldValue) void show(el, binding.value);
  },
};
