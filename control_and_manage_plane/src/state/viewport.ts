// The one layout breakpoint: under 600 px (Material's compact window class) the navigation rail
// becomes a bottom bar and tables become stacked cards.
import { ref } from "vue";

const query = window.matchMedia("(max-width: 599.98px)");
export const compact = ref(query.matches);
query.addEventListener("change", (e) => (compact.value = e.matches));
