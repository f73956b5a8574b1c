/*
 * A fleet of simulated nodes for the scale bench (bench/scale.ts starts one or more):
 *
 *   node dist/bench/fleet.js ETCD_URL PREFIX COUNT TTL_SECONDS DATA_DIR [CA_FILE CERT_FILE KEY_FILE]
 *
 * runs COUNT real Agents (PREFIX-0 … PREFIX-(COUNT-1)) with the mock driver in this process:
 * each registers its node, keeps its own lease alive (TTL_SECONDS), reconciles its assignments and
 * writes their status, as a real agent does. They share one etcd client, and their assignment
 * watches share one etcd watch (bench/shared-watch.ts). Prints "fleet ready N" once every agent
 * has started, and "fleet lost-lease N" whenever an agent had to re-grant its lease (a node that
 * was NotReady). Stops on SIGTERM.
 */
import { join } from "node:path";
import { setMaxListeners } from "node:events";
import { Agent } from "../internal/agent/index.js";
import { createMockDriver } from "../pkg/compute/mock/index.js";
import { openEtcdStore } from "../pkg/cluster/etcd/index.js";
import { keys } from "../pkg/cluster/state/index.js";
import { logger } from "../pkg/log/index.js";
import { SharedWatch } from "./shared-watch.js";

const [endpoint, prefix, countArg, ttlArg, dir, caFile, certFile, keyFile] = process.argv.slice(2);
const count = Number(countArg);
const ttl = Number(ttlArg);
if (!endpoint || !dir || !prefix || !/^[a-z0-9]+$/.test(prefix) || !Number.isInteger(count) || !(ttl >= 1))
  throw new Error("usage: fleet.js ETCD_URL PREFIX COUNT TTL_SECONDS DATA_DIR [CA CERT KEY]");

const ac = new AbortController();
setMaxListeners(count * 8 + 100, ac.signal);
// A keep-alive stream for every few nodes, as each real node has its own: on one stream, a lease
// that expired holds every renewal behind it until etcd has revoked it, and a few expiries
// cascade into thousands (seen with 16 streams for 2,500 nodes).
const store = await openEtcdStore({
  endpoints: [endpoint],
  keepAliveStreams: Math.max(16, Math.ceil(count / 2)),
  // With TLS (bench/scale.ts by default): this fleet's etcd identity, a role of node keys only.
  ...(caFile && certFile && keyFile ? { tls: { caFile, certFile, keyFile } } : {}),
});
// Only this fleet's nodes' assignments: the other fleets' events are none of its business.
const shared = new SharedWatch(store, keys.assignments, `${keys.assignments}${prefix}-`);
await shared.start(ac.signal);
const log = logger("fleet");
log.level = "warn";

const agents: Agent[] = [];
let next = 0;
await Promise.all(
  Array.from({ length: 64 }, async () => {
    for (let i = next++; i < count; i = next++) {
      const name = `${prefix}-${i}`;
      const dataDir = join(dir, name);
      const agent = new Agent({
        store: shared.store,
        nodeName: name,
        // State in memory: a real node's driver writes its own disk, not the control plane's
        // machine's, and 5,000 nodes' files here would measure this machine's page cache.
        drivers: [createMockDriver({})],
        dataDir,
        capacity: { vcpus: 16, memoryMiB: 65536, diskGiB: 500 },
        heartbeatTtlSeconds: ttl,
        listen: "",
        workers: 4, // as a real agent: a node given several instances at once reconciles them together
        // The safety-net resync would re-fingerprint 5,000 nodes every 30 s; the watch is enough here.
        resyncMs: 3_600_000,
        logger: log.child({ node: name }),
      });
      await agent.start(ac.signal);
      agents[i] = agent;
    }
  }),
);
console.log(`fleet ready ${agents.length}`);

// A lease that had to be granted again means the node's alive key expired: a false NotReady.
let regrants = 0;
const watchRegrants = setInterval(() => {
  const now = agents.reduce((n, a) => n + a.heartbeatRegrants, 0);
  if (now !== regrants) console.log(`fleet lost-lease ${now - regrants}`);
  regrants = now;
}, 1000);

const stop = async () => {
  clearInterval(watchRegrants);
  ac.abort();
  await Promise.all(agents.map((a) => a.stop().catch(() => undefined)));
  await store.close();
  process.exit(0);
};
process.once("SIGTERM", () => void stop());
process.once("SIGINT", () => void stop());
