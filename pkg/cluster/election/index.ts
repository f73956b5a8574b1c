// Leader election between server replicas on the Store contract (etcd or embedded): one key under
// the candidate's own lease, kept alive here; followers watch it and campaign when it goes.
export { Election, type ElectionOptions, type LeadershipChange } from "./election.js";
