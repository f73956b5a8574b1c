/*
 * The code and message of a call that must be refused, for tests of the API: fails the test when
 * the call succeeds. The message is the raw one, without the "[code]" prefix ConnectError adds.
 */
import assert from "node:assert/strict";
import { type Code, ConnectError } from "@connectrpc/connect";

export async function refusal(p: Promise<unknown>): Promise<{ code: Code; message: string }> {
  try {
    await p;
  } catch (e) {
    const err = ConnectError.from(e);
    return { code: err.code, message: err.rawMessage };
  }
  return assert.fail("expected a refusal, and the call succeeded");
}
