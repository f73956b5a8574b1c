// TTL liveness: the agent keeps nodes/<node>/alive under a lease it refreshes every TTL/3 (Heartbeat),
// and the server watches which of those keys exist (LivenessMonitor): present = Ready.
export { Heartbeat, type HeartbeatOptions } from "./heartbeat.js";
export { LivenessMonitor, type LivenessChange, type LivenessListener } from "./monitor.js";
