/*
 * Which project this tab looks at: one project, or every project the user may list ("*", "All
 * projects"). The projects offered are ListProjects' (the server answers with those the user may
 * see). The choice is the tab's (sessionStorage) and the URL's (?project=web, router.ts), so a
 * link opens the same view; the live instance stream watches it.
 *
 *   signed in ──► ListProjects ──► choose: ?project= if offered, else the tab's last choice,
 *        │                          else "default" if seen, else the first with a role, else the first
 *        │                                   │
 *        │                                   ▼
 *        │                         current ──► WatchInstances(project: current) ──► instances
 *        │                            ▲
 *        │       switcher / ?project= ┘ (a change restarts the stream)
 *   signed out ──► stream stopped, choice forgotten
 */
import { create } from "@bufbuild/protobuf";
import { reactive, watch } from "vue";
import { ProjectSchema, type Project } from "../../../api/gen/hypervisor/v1/project_pb.js";
import { errorText, projectClient } from "../api/index.js";
import { startInstanceWatch, stopInstanceWatch } from "./instances.js";
import { can, canIn, session } from "./session.js";

/** Every project the user may list instances in. */
export const ALL_PROJECTS = "*";

const KEY = "hypervisor.project";

export const projectState = reactive({
  /** "" until chosen (signed out, or ListProjects has not answered yet). */
  current: "",
  /** What ListProjects answered, by name. */
  projects: [] as Project[],
  /** Why the list could not be read (the switcher then offers what WhoAmI names). */
  error: "",
});

/** The projects whose instances the user may list. */
export function listable(): string[] {
  return projectState.projects.map((p) => p.name).filter((p) => canIn("instances:list", p));
}

/** "All projects" is offered when the user may list instances in more than one. */
export function offersAll(): boolean {
  return listable().length > 1;
}

/** Whether `choice` ("*" or a name) is one this user may pick. */
export function offered(choice: string): boolean {
  return choice === ALL_PROJECTS ? offersAll() : projectState.projects.some((p) => p.name === choice);
}

/** The projects a new instance may go to: those where the user may create. */
export function creatable(): string[] {
  return projectState.projects.map((p) => p.name).filter((p) => canIn("instances:create", p));
}

function remembered(): string {
  try {
    return sessionStorage.getItem(KEY) ?? "";
  } catch {
    return "";
  }
}

function remember(choice: string): void {
  try {
    if (choice) sessionStorage.setItem(KEY, choice);
    else sessionStorage.removeItem(KEY);
  } catch {
    // storage disabled: the URL still carries the choice
  }
}

/** The project the tab opens on, from what the user may see. */
function initial(fromUrl: string): string {
  for (const c of [fromUrl, remembered()]) if (c && offered(c)) return c;
  const names = projectState.projects.map((p) => p.name);
  if (names.includes("default")) return "default";
  const withRole = session.projectRights.map((p) => p.project).find((p) => names.includes(p));
  return withRole ?? names[0] ?? "default";
}

/** Switches to `choice` ("*" or a project); the stream follows. Ignores what the user may not pick. */
export function setProject(choice: string): boolean {
  if (!session.user || !projectState.current) return false;
  if (choice === projectState.current) return true;
  if (!offered(choice)) return false;
  projectState.current = choice;
  remember(choice);
  stopInstanceWatch();
  startInstanceWatch(choice);
  return true;
}

/**
 * Without ListProjects' answer, the projects WhoAmI names (those with a role) and default for a
 * user who may list at cluster scope: the tab still opens somewhere the user may look.
 */
function fromRights(): Project[] {
  const names = new Set(session.projectRights.map((p) => p.project));
  if (can("instances:list")) names.add("default");
  return [...names].sort().map((name) => create(ProjectSchema, { name }));
}

async function enter(): Promise<void> {
  const user = session.user;
  try {
    const { projects } = await projectClient.listProjects({});
    if (session.user !== user) return;
    projectState.projects = projects;
    projectState.error = "";
  } catch (e) {
    if (session.user !== user) return;
    projectState.projects = fromRights();
    projectState.error = errorText(e);
  }
  const fromUrl = new URLSearchParams(window.location.search).get("project") ?? "";
  projectState.current = initial(fromUrl);
  remember(projectState.current);
  startInstanceWatch(projectState.current);
}

/** Reads the project list again (after a create, say); keeps the choice. */
export async function refreshProjects(): Promise<void> {
  try {
    projectState.projects = (await projectClient.listProjects({})).projects;
  } catch {
    // the list shown stays
  }
}

watch(
  () => session.user,
  (user, before) => {
    if (before) {
      stopInstanceWatch();
      projectState.current = "";
      projectState.projects = [];
      remember("");
    }
    if (user) void enter();
  },
);
