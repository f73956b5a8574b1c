// Where this tab keeps the API token it signed in with.
//
// sessionStorage, not localStorage: the token dies with the tab. A token is a bearer secret that
// acts with every right of its roles; kept in localStorage it would outlive the tab (and the
// browser's restart) and be shared by every tab of the origin, so a forgotten sign-in on a shared
// machine would stay signed in. A page reload in the same tab keeps it, which is all we need.
const KEY = "hypervisor.token";

export function storedToken(): string {
  try {
    return sessionStorage.getItem(KEY) ?? "";
  } catch {
    return ""; // storage disabled: nobody is signed in
  }
}

export function storeToken(token: string): void {
  sessionStorage.setItem(KEY, token);
}

export function forgetToken(): void {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // nothing was stored
  }
}
