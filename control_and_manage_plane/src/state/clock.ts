// "Now", ticking every few seconds, so relative times ("12s ago") age on screen.
import { ref } from "vue";

export const now = ref(Date.now());
setInterval(() => (now.value = Date.now()), 5000);
