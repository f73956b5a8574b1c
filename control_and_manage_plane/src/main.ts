/*
 * The management UI: Vue 3 with MDUI's Material 3 web components, talking Connect to the server
 * that served it. One live instance stream starts here and feeds every page.
 */
import "mdui/mdui.css";
import "mdui";
import "./styles.css";
import { createApp } from "vue";
import App from "./App.vue";
import { router } from "./router.js";
import { startInstanceWatch, applyTheme } from "./state/index.js";

applyTheme();
startInstanceWatch();
createApp(App).use(router).mount("#app");
