import assert from "node:assert/strict";
import { hostname } from "node:os";
import { describe, it } from "node:test";
import { hostOf, OriginPolicy } from "./origin-policy.js";

describe("origin policy", () => {
  const policy = new OriginPolicy({
    allowedHosts: [],
    allowedOrigins: ["https://portal.example"],
    desktopFrameAncestors: [],
    listenHost: "0.0.0.0",
  });
  const named = new OriginPolicy({
    allowedHosts: ["hv.example.org"],
    allowedOrigins: [],
    desktopFrameAncestors: [],
    listenHost: "127.0.0.1",
  });

  it("parses the host out of Host headers", () => {
    const cases: [string, string | undefined][] = [
      ["example.com:7070", "example.com"],
      ["EXAMPLE.com.", "example.com"],
      ["[::1]:7070", "::1"],
      ["127.0.0.1", "127.0.0.1"],
      ["a b", undefined],
      ["user@host", undefined],
      ["[::1", undefined],
      ["", undefined],
    ];
    for (const [input, want] of cases) assert.equal(hostOf(input), want, input);
  });

  it("accepts IP literals and the default names, refuses other names", () => {
    const table: [Record<string, string>, boolean][] = [
      [{ host: "127.0.0.1:7070" }, true],
      [{ host: "10.1.2.3:7070" }, true],
      [{ host: "[fe80::1]:7070" }, true],
      [{ host: "localhost:7070" }, true],
      [{ host: `${hostname()}:7070` }, true],
      [{ ":authority": "localhost" }, true],
      [{ host: "rebind.attacker.example:7070" }, false],
      [{ ":authority": "rebind.attacker.example" }, false],
      [{}, false],
      [{ host: "bad host" }, false],
    ];
    for (const [headers, ok] of table) assert.equal(policy.check(headers).ok, ok, JSON.stringify(headers));
  });

  it("with allowed-hosts set, accepts only those names (and IPs)", () => {
    assert.equal(named.check({ host: "hv.example.org" }).ok, true);
    assert.equal(named.check({ host: "localhost" }).ok, false);
    assert.equal(named.check({ host: "127.0.0.1" }).ok, true);
  });

  it("accepts an Origin of the same scheme host and port, or an allowed one", () => {
    const table: [string, string, boolean][] = [
      ["127.0.0.1:7070", "http://127.0.0.1:7070", true],
      ["localhost", "http://localhost", true],
      ["localhost:80", "http://localhost", true],
      ["localhost:7070", "http://localhost:7071", false],
      ["localhost:7070", "http://127.0.0.1:7070", false],
      ["localhost:7070", "https://portal.example", true],
      ["localhost:7070", "https://portal.example:8443", false],
      ["localhost:7070", "null", false],
      ["localhost:7070", "file://", false],
    ];
    for (const [host, origin, ok] of table) assert.equal(policy.check({ host, origin }).ok, ok, `${host} ${origin}`);
  });

  it("names the offending value in its refusal", () => {
    const v = policy.check({ host: "localhost", origin: "http://evil.example" });
    assert.equal(v.ok, false);
    assert.match(v.ok ? "" : v.message, /origin "http:\/\/evil\.example" is not this server's/);
  });

  it("lets pages fetch from this server only, and from the OIDC issuer when one is named", () => {
    const connect = (p: OriginPolicy, path: string) => /(?:^|; )connect-src ([^;]*)/.exec(p.headers(path)["content-security-policy"]!)?.[1];
    assert.equal(connect(policy, "/"), "'self'");
    const oidc = new OriginPolicy({
      allowedHosts: [],
      allowedOrigins: [],
      desktopFrameAncestors: [],
      listenHost: "0.0.0.0",
      connectSources: ["https://idp.example"],
    });
    assert.equal(connect(oidc, "/"), "'self' https://idp.example");
    assert.equal(connect(oidc, "/desktop/"), "'self' https://idp.example");
  });
});
