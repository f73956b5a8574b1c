// Where an OIDC issuer may be: the server (oidc-issuer), ctl (the issuer a server names) and the
// UI check it the same way. Browser-safe.

/** 127.0.0.0/8, ::1 (bracketed too, as a URL's hostname has it) and localhost: names no other machine answers. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[(.*)\]$/, "$1");
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * Why an issuer URL is unusable, or undefined: https, or http on loopback only (where nothing
 * crosses a network: tests, a provider on the same machine); no query, fragment or credentials.
 */
export function issuerProblem(issuer: string): string | undefined {
  let u: URL;
  try {
    u = new URL(issuer);
  } catch {
    return "is not a URL";
  }
  if (u.protocol !== "https:" && !(u.protocol === "http:" && isLoopbackHost(u.hostname)))
    return "must be an https URL (http only on loopback: 127.0.0.1, ::1, localhost)";
  if (u.search !== "" || u.hash !== "" || u.username !== "" || u.password !== "") return "must have no query, fragment, user or password";
  return undefined;
}
