// Signing in with an API token, shared by the management UI and the desktop page: the tab's token
// (sessionStorage), the interceptor that sends it on every Connect call and reports refusals, and
// the WhoAmI check of a pasted token. Or with the cluster's OIDC provider (oidc.ts), whose ID
// token is then the tab's token.
export { bearer, onUnauthenticated } from "./bearer.js";
export { forgetToken, storedToken } from "./token.js";
export { signInWith, whoAmI, type Identity } from "./who-am-i.js";
export {
  authConfig,
  beginOidcSignIn,
  CALLBACK_PATH,
  completeOidcSignIn,
  idTokenExpiry,
  isOidcCallback,
  issuerHost,
  type OidcConfig,
} from "./oidc.js";
