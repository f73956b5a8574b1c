// Pages by URL. The server answers every unknown path with the app (SPA fallback), so these URLs
// can be bookmarked and reloaded. The tab's project (state/projects.ts) rides in the query
// (?project=web, or * for all) of every page but an instance's, whose path names its project, so
// a link opens the same view for whoever may see it.
import { watch } from "vue";
import { createRouter, createWebHistory, type RouteLocationNormalized, type RouteRecordRaw } from "vue-router";
import { finishOidcSignIn, projectState, setProject } from "./state/index.js";

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
    path: "/audit",
    name: "audit",
    component: () => import("./pages/AuditPage.vue"),
    meta: { section: "audit", title: "Audit" },
  },
  {
    path: "/projects",
    name: "projects",
    component: () => import("./pages/ProjectsPage.vue"),
    meta: { section: "projects", title: "Projects" },
  },
  {
    path: "/instances",
    name: "instances",
    component: () => import("./pages/InstancesPage.vue"),
    meta: { section: "instances", title: "Instances" },
  },
  {
    path: "/instances/:project/:name",
    name: "instance",
    component: () => import("./pages/InstanceDetailPage.vue"),
    props: true,
    meta: { section: "instances", title: "Instance" },
  },
  // Links from before projects: an instance of project default.
  { path: "/instances/:name", redirect: (to) => ({ name: "instance", params: { project: "default", name: to.params.name }, query: {} }) },
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

/** Pages that show the tab's project in their query: the sections, not an instance (its path says) nor the callback. */
const carriesProject = (to: RouteLocationNormalized) => typeof to.meta.section === "string" && to.meta.section !== "" && !to.params.project;

router.beforeEach((to) => {
  const current = projectState.current;
  if (!current || !carriesProject(to)) return true;
  const asked = typeof to.query.project === "string" ? to.query.project : "";
  // A link's project, when this user may pick it; otherwise the tab's stays and the URL says so.
  if (asked === current || (asked && setProject(asked))) return true;
  return { path: to.path, hash: to.hash, query: { ...to.query, project: current }, replace: true };
});

/** Puts the tab's project in the URL of the page shown, when it carries one and says another. */
function showProject(): void {
  const here = router.currentRoute.value;
  const current = projectState.current;
  if (current && carriesProject(here) && here.query.project !== current)
    void router.replace({ path: here.path, hash: here.hash, query: { ...here.query, project: current } });
}

// Chosen after sign-in, or switched: the URL follows. Chosen while a navigation was under way (the
// OIDC callback's, to the page the sign-in began at): once it lands.
watch(() => projectState.current, showProject);
router.afterEach(() => showProject());

router.afterEach((to) => {
  const name = typeof to.params.name === "string" ? to.params.name : "";
  const title = typeof to.meta.title === "string" ? to.meta.title : "";
  document.title = `${name || title} · hypervisor`;
});
