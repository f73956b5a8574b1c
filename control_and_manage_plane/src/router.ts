// Pages by URL. The server answers every unknown path with the app (SPA fallback), so these URLs
// can be bookmarked and reloaded.
import { createRouter, createWebHistory, type RouteRecordRaw } from "vue-router";
import { finishOidcSignIn } from "./state/index.js";

const routes: RouteRecordRaw[] = [
  {
    path: "/",
    name: "dashboard",
    component: () => import("./pages/DashboardPage.vue"),
    meta: { section: "dashboard", title: "Dashboard" },
  },
  { path: "/nodes", name: "nodes", component: () => import("./pages/NodesPage.vue"), meta: { section: "nodes", title: "Nodes" } },
  {
    path: "/nodes/:name",
    name: "node",
    component: () => import("./pages/NodeDetailPage.vue"),
    props: true,
    meta: { section: "nodes", title: "Node" },
  },
  {
    path: "/instances",
    name: "instances",
    component: () => import("./pages/InstancesPage.vue"),
    meta: { section: "instances", title: "Instances" },
  },
  {
    path: "/instances/:name",
    name: "instance",
    component: () => import("./pages/InstanceDetailPage.vue"),
    props: true,
    meta: { section: "instances", title: "Instance" },
  },
  {
    // Back from the OIDC provider: the guard signs in and goes on to the page the sign-in began at.
    path: "/auth/callback",
    name: "auth-callback",
    component: () => import("./pages/AuthCallbackPage.vue"),
    beforeEnter: (to) => finishOidcSignIn(to.fullPath),
    meta: { section: "", title: "Signing in" },
  },
  {
    path: "/:rest(.*)*",
    name: "not-found",
    component: () => import("./pages/NotFoundPage.vue"),
    meta: { section: "", title: "Not found" },
  },
];

export const router = createRouter({ history: createWebHistory("/"), routes });

router.afterEach((to) => {
  const name = typeof to.params.name === "string" ? to.params.name : "";
  const title = typeof to.meta.title === "string" ? to.meta.title : "";
  document.title = `${name || title} · hypervisor`;
});
