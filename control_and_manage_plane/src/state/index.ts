// App-wide state: who is signed in and what they may do, the live instance stream, node refresh,
// actions on instances and nodes (with their confirmation), notifications, theme, the layout
// breakpoint and a ticking clock.
export { allowed, deleteRequested, inFlight, lastError, runAction, type Action } from "./actions.js";
export { now } from "./clock.js";
export { confirm, confirmState, settleConfirm, type ConfirmRequest } from "./confirm.js";
export { changesOf, instances, watchState, type Change, type ChangeKind } from "./instances.js";
export { nodeInFlight, orphanInFlight, runNodeAction, runOrphanAction, type NodeAction } from "./node-actions.js";
export { useNodes, useRefresh } from "./nodes.js";
export { notify, notifyError } from "./notify.js";
export { can, finishOidcSignIn, needs, resumeSession, session, signIn, signOut } from "./session.js";
export { applyTheme, theme, toggleTheme, type ThemeChoice } from "./theme.js";
export { compact } from "./viewport.js";
