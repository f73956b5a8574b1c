/*
 * The management UI: Vue 3 with MDUI's Material 3 web components, talking Connect to the server
 * that served it, as the user whose API token was pasted on the sign-in page. One live instance
 * stream, started at sign-in, feeds every page.
 */
import "mdui/mdui.css";
import "mdui";
import "./styles.css";
import { createApp } from "vue";
import App from "./App.vue";
import { router } from "./router.js";
import { applyTheme, resumeSession } from "./state/index.js";

applyTheme();
// The live stream starts once someone is signed in (state/session.ts).
void resumeSession();
createApp(App).use(router).mount("#app");
