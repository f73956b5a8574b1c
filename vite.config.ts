// The browser side: the management UI (control_and_manage_plane/) and the HTML5 desktop page
// (pkg/virtual-apps-and-desktop/html-web-access/), built together into dist/ui with shared
// chunks. hypervisor-server serves the first at / and the second at /desktop/ (internal/server/static.ts).
import { fileURLToPath } from "node:url";
import vue from "@vitejs/plugin-vue";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));

export default defineConfig({
  root,
  base: "/",
  plugins: [vue({ template: { compilerOptions: { isCustomElement: (tag) => tag.startsWith("mdui-") } } })],
  build: {
    outDir: "dist/ui",
    emptyOutDir: true,
    chunkSizeWarningLimit: 2048,
    rollupOptions: {
      input: {
        app: `${root}control_and_manage_plane/index.html`,
        desktop: `${root}pkg/virtual-apps-and-desktop/html-web-access/index.html`,
      },
    },
  },
});
