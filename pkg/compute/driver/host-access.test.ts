// The host access rule the scheduler and the drivers share: what a driver_config asks of the
// host, and what a node's policy refuses, naming the agent config key.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { DENY_ALL, hostAccessError, hostAccessRefusal, hostAccessRequest } from "./host-access.js";

describe("host access", () => {
  it("reads the host network and a host bridge from driver_config network", () => {
    assert.deepEqual(hostAccessRequest({ network: "host" }), { hostNetwork: true, network: "host" });
    // QEMU's user-mode network maps 10.0.2.2 to the node's loopback: the same reach as the host network.
    assert.deepEqual(hostAccessRequest({ network: "user" }), { hostNetwork: true, network: "user" });
    assert.deepEqual(hostAccessRequest({ network: "bridge:br0" }), { hostNetwork: false, bridge: "br0" });
    const others: Record<string, string>[] = [{}, { network: "none" }, { network: "hostile" }, { run_for: "host" }];
    for (const config of others) assert.deepEqual(hostAccessRequest(config), { hostNetwork: false }, JSON.stringify(config));
  });

  it("refuses by default, naming the config key and value; allows what the policy lists", () => {
    const host = hostAccessRequest({ network: "host" });
    const br0 = hostAccessRequest({ network: "bridge:br0" });
    assert.equal(hostAccessRefusal(host, DENY_ALL), "host network not allowed (allow-host-network)");
    assert.equal(hostAccessRefusal(br0, DENY_ALL), "bridge br0 not allowed (allowed-bridges)");
    assert.equal(
      hostAccessError(host, DENY_ALL, "n1"),
      'driver_config.network: "host" is not allowed on node n1 (allow-host-network: false)',
    );
    assert.equal(
      hostAccessError(br0, { hostNetwork: true, bridges: ["br1", "br2"] }, "n1"),
      'driver_config.network: "bridge:br0" is not allowed on node n1 (allowed-bridges: [br1, br2])',
    );
    const user = hostAccessRequest({ network: "user" });
    assert.equal(hostAccessRefusal(user, DENY_ALL), "user network reaches the host's loopback (allow-host-network)");
    assert.match(
      hostAccessError(user, DENY_ALL, "n1") ?? "",
      /^driver_config\.network: "user" is not allowed on node n1 \(allow-host-network: false\)/,
    );
    const open = { hostNetwork: true, bridges: ["br0"] };
    assert.equal(hostAccessRefusal(host, open), undefined);
    assert.equal(hostAccessRefusal(br0, open), undefined);
    assert.equal(hostAccessError(br0, open, "n1"), undefined);
    assert.equal(hostAccessRefusal(hostAccessRequest({}), DENY_ALL), undefined);
  });
});
