// Checking a pasted token before keeping it: AccessService.WhoAmI with that token says who it is
// and what its roles allow, or refuses it (malformed, unknown, revoked, expired) in the server's
// words. Only a token that authenticates as a token is kept; nothing is stored before.
import { createClient, type Transport } from "@connectrpc/connect";
import { AccessService, type WhoAmIResponse } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { storedToken, storeToken } from "./token.js";

/** Who is signed in: cluster-scope roles and rights, groups (OIDC), and roles and rights per project. */
export interface Identity extends Pick<WhoAmIResponse, "user" | "roles" | "rights" | "groups"> {
  projectRights: { project: string; roles: string[]; rights: string[] }[];
}

function identity(me: WhoAmIResponse): Identity {
  return {
    user: me.user,
    roles: [...me.roles],
    rights: [...me.rights],
    groups: [...me.groups],
    projectRights: me.projectRights.map((p) => ({ project: p.project, roles: [...p.roles], rights: [...p.rights] })),
  };
}

/**
 * Who `token` is (a pasted API token, or the ID token of an OIDC sign-in); throws the server's
 * refusal. Keeps the token for this tab when it is good.
 */
export async function signInWith(transport: Transport, token: string, kind: "token" | "oidc" = "token"): Promise<Identity> {
  const t = token.trim();
  if (!t) throw new Error("paste an API token (hvt_...)");
  const me = await createClient(AccessService, transport).whoAmI({}, { headers: { authorization: `Bearer ${t}` } });
  if (kind === "token" && me.authenticatedBy !== "token")
    throw new Error(`the server took this as ${me.authenticatedBy || "no"} credentials, not a token`);
  if (kind === "oidc" && (me.authenticatedBy === "none" || me.user === ""))
    throw new Error("the server did not take the sign-in's ID token (it answered as anonymous: is its access control off?)");
  storeToken(t);
  return identity(me);
}

/** Who this tab's stored token is (its rights may have changed), or undefined without one. */
export async function whoAmI(transport: Transport): Promise<Identity | undefined> {
  const t = storedToken();
  if (!t) return undefined;
  const me = await createClient(AccessService, transport).whoAmI({});
  // An API token, or an OIDC sign-in's ID token: anything but anonymous.
  if (me.authenticatedBy === "none" || me.user === "") return undefined;
  return identity(me);
}
