// Light or dark, the user's choice kept in localStorage; until they choose, the system's.
import { ref } from "vue";
import { setColorScheme } from "mdui/functions/setColorScheme.js";
import { setTheme } from "mdui/functions/setTheme.js";

export type ThemeChoice = "light" | "dark";
const KEY = "hypervisor.theme";
// The seed of the Material 3 palette (tonal palettes are computed from it).
const SEED = "#0b57d0";

function initial(): ThemeChoice {
  const saved = localStorage.getItem(KEY);
  if (saved === "light" || saved === "dark") return saved;
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

export const theme = ref<ThemeChoice>(initial());

export function applyTheme(): void {
  setColorScheme(SEED);
  setTheme(theme.value);
  document.documentElement.dataset.theme = theme.value;
}

export function toggleTheme(): void {
  theme.value = theme.value === "dark" ? "light" : "dark";
  localStorage.setItem(KEY, theme.value);
  applyTheme();
}
