// The server's driver registry (ClusterService.ListDrivers), fetched once per page load: which
// drivers there are, what each takes in a spec, and what it can do (console, logs).
import type { DriverDescription } from "../../../api/gen/hypervisor/v1/cluster_pb.js";
import { clusterClient } from "./clients.js";

let loaded: Promise<DriverDescription[]> | undefined;

export function listDrivers(): Promise<DriverDescription[]> {
  loaded ??= clusterClient.listDrivers({}).then(
    (r) => r.drivers,
    (e: unknown) => {
      loaded = undefined; // asked again next time
      throw e;
    },
  );
  return loaded;
}
