// Signing in with an API token, shared by the management UI and the desktop page: the tab's token
// (sessionStorage), the interceptor that sends it on every Connect call and reports refusals, and
// the WhoAmI check of a pasted token.
export { bearer, onUnauthenticated } from "./bearer.js";
export { forgetToken, storedToken } from "./token.js";
export { signInWith, whoAmI, type Identity } from "./who-am-i.js";
