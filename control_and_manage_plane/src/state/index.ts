// App-wide state: who is signed in and what they may do, the project the tab looks at, the live
// instance stream, node refresh, actions on instances and nodes (with their confirmation),
// notifications, theme, the layout breakpoint and a ticking clock.
export { allowed, deleteRequested, inFlight, lastError, runAction, type Action } from "./actions.js";
export { now } from "./clock.js";
export { confirm, confirmState, settleConfirm, type ConfirmRequest } from "./confirm.js";
export { changesOf, instanceKey, instances, watchState, type Change, type ChangeKind } from "./instances.js";
export { nodeInFlight, orphanInFlight, runNodeAction, runOrphanAction, type NodeAction } from "./node-actions.js";
export { useNodes, useRefresh } from "./nodes.js";
export { notify, notifyError } from "./notify.js";
export { ALL_PROJECTS, creatable, listable, offersAll, projectState, refreshProjects, setProject } from "./projects.js";
export { can, canIn, finishOidcSignIn, needs, needsIn, resumeSession, rolesText, session, signIn, signOut } from "./session.js";
export { applyTheme, theme, toggleTheme, type ThemeChoice } from "./theme.js";
export { compact } from "./viewport.js";
