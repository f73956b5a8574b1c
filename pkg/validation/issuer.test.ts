// Where an OIDC issuer may be: https anywhere, http on loopback only.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { issuerProblem } from "./index.js";

describe("issuerProblem", () => {
  it("takes https issuers, and http on loopback only", () => {
    for (const ok of [
      "https://idp.example.com",
      "https://idp.example.com/realms/x",
      "http://127.0.0.1:5556/dex",
      "http://localhost:8080",
      "http://[::1]:1",
    ])
      assert.equal(issuerProblem(ok), undefined, ok);
    assert.match(issuerProblem("http://idp.example.com")!, /must be an https URL/);
    assert.match(issuerProblem("idp.example.com")!, /is not a URL/);
    assert.match(issuerProblem("https://idp.example.com/?x=1")!, /no query/);
    assert.match(issuerProblem("ftp://idp")!, /must be an https URL/);
  });
});
