/*
 * What of the host an instance asks for, and whether a node allows it. Two things reach past an
 * instance's own sandbox into the node: the host's network namespace (a container with
 * driver_config network=host shares the node's loopback, so it reaches etcd, the agent's endpoint
 * and anything else listening there) and a host bridge (a VM with network=bridge:<name> sits on
 * that segment). Both are denied unless the node's agent config allows them:
 *
 *   allow-host-network: true      driver_config network=host
 *   allowed-bridges: [br0, ...]   driver_config network=bridge:br0
 *
 * A VM on QEMU's user-mode network (network=user) counts as host network too: slirp maps
 * 10.0.2.2 to the node's 127.0.0.1, so the guest reaches the same loopback services.
 *
 * The node advertises its policy in its record, the scheduler places an instance only where it is
 * allowed (scheduler.ts), and the driver refuses it again on the node (the store may say otherwise).
 * The `network` key means the same in every driver that has it: one rule, here.
 */

/** What an instance's driver_config asks of the host. */
export interface HostAccessRequest {
  hostNetwork: boolean;
  /** The network value that asks for the host network ("host", or "user" for a VM's slirp). */
  network?: string;
  /** The host bridge it joins, if any. */
  bridge?: string;
}

/** What a node allows: its agent's allow-host-network and allowed-bridges. */
export interface HostAccessPolicy {
  hostNetwork: boolean;
  bridges: readonly string[];
}

export const DENY_ALL: HostAccessPolicy = { hostNetwork: false, bridges: [] };

/** The host access an instance's driver_config asks for (nothing for any other value). */
export function hostAccessRequest(config: Readonly<Record<string, string>>): HostAccessRequest {
  const network = config.network ?? "";
  if (network === "host" || network === "user") return { hostNetwork: true, network };
  const m = /^bridge:(.+)$/.exec(network);
  return m ? { hostNetwork: false, bridge: m[1]! } : { hostNetwork: false };
}

/**
 * Why `policy` refuses `request`, in a few words naming the agent config key, as the scheduler
 * counts it per node; undefined when it allows it.
 */
export function hostAccessRefusal(request: HostAccessRequest, policy: HostAccessPolicy): string | undefined {
  if (request.hostNetwork && !policy.hostNetwork)
    return request.network === "user"
      ? "user network reaches the host's loopback (allow-host-network)"
      : "host network not allowed (allow-host-network)";
  if (request.bridge !== undefined && !policy.bridges.includes(request.bridge))
    return `bridge ${request.bridge} not allowed (allowed-bridges)`;
  return undefined;
}

/** The same refusal as a driver reports it on the node: the field, the value, the config key and its value. */
export function hostAccessError(request: HostAccessRequest, policy: HostAccessPolicy, node: string): string | undefined {
  if (request.hostNetwork && !policy.hostNetwork)
    return `driver_config.network: ${JSON.stringify(request.network ?? "host")} is not allowed on node ${node} (allow-host-network: false)${request.network === "user" ? ": user-mode networking reaches the node's loopback" : ""}`;
  if (request.bridge !== undefined && !policy.bridges.includes(request.bridge))
    return `driver_config.network: ${JSON.stringify(`bridge:${request.bridge}`)} is not allowed on node ${node} (allowed-bridges: [${policy.bridges.join(", ")}])`;
  return undefined;
}

/**
 * What a restricted project refuses (Incus' restricted projects): every setting that reaches the
 * node itself rather than the instance's own sandbox: the host's network, user-mode networking
 * (it reaches the node's loopback), a host bridge, and a kernel or initrd read from a host path.
 * The field and why, or undefined when the spec has none.
 */
export function restrictedRefusal(spec: {
  readonly driverConfig: Readonly<Record<string, string>>;
  readonly kernel: string;
  readonly initrd: string;
}): { field: string; message: string } | undefined {
  const host = hostAccessRequest(spec.driverConfig);
  const network = JSON.stringify(spec.driverConfig.network ?? "");
  if (host.hostNetwork)
    return {
      field: "spec.driver_config.network",
      message: `${network} reaches the node's ${host.network === "user" ? "loopback" : "network"}; a restricted project may not use it`,
    };
  if (host.bridge !== undefined)
    return { field: "spec.driver_config.network", message: `${network} is a host bridge; a restricted project may not use one` };
  if (spec.kernel !== "") return { field: "spec.kernel", message: "is a path on the node; a restricted project boots images only" };
  if (spec.initrd !== "") return { field: "spec.initrd", message: "is a path on the node; a restricted project boots images only" };
  return undefined;
}
