/*
 * The instances as the server sees them, kept live by one WatchInstances stream for the whole app
 * (the list, the dashboard and the detail page all read this copy; nothing polls). The stream sends
 * every instance as ADDED, then SYNCED, then changes; when it breaks we reconnect with backoff and
 * the next SYNCED drops what disappeared meanwhile. It watches the tab's project (projects.ts), or
 * every project the user may list ("*"); a switch stops it and starts another.
 *
 *   connect ──► ADDED… ──► SYNCED ──► ADDED | MODIFIED | DELETED … ──► (error/end) ──► wait ──► connect
 *                                         └─► changes[] (the "recent events" the UI shows)
 */
import { markRaw, reactive, shallowReactive } from "vue";
import { EventType, type Instance } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { instanceClient, errorText, instanceState, toDate } from "../api/index.js";

export type ChangeKind = "created" | "changed" | "deleted";

export interface Change {
  id: number;
  time: Date;
  kind: ChangeKind;
  project: string;
  name: string;
  /** The instance's state after the change ("Running", "Deleting", ...). */
  state: string;
  node: string;
  message: string;
}

const MAX_CHANGES = 200;
const BACKOFF_MS = [250, 500, 1000, 2000, 5000];

/** The key of an instance in `instances`: names are unique within a project only. */
export function instanceKey(project: string, name: string): string {
  return `${project || "default"}/${name}`;
}

const keyOf = (i: Instance) => instanceKey(i.project, i.name);

/** project/name → instance; replaced whole on every change (the messages are frozen with markRaw). */
export const instances = shallowReactive(new Map<string, Instance>());

export const watchState = reactive({
  /** The initial list has arrived at least once. */
  synced: false,
  connected: false,
  /** The project watched ("*": every project the user may list); "" while stopped. */
  project: "",
  /** Why the stream broke, while it is down. */
  error: "",
  /** Newest first. */
  changes: [] as Change[],
});

let running: AbortController | undefined;
let nextId = 1;

/** Starts the stream of `project` (once: a second call while it runs does nothing). */
export function startInstanceWatch(project: string): void {
  if (running) return;
  running = new AbortController();
  watchState.project = project;
  void run(running.signal, project);
}

/** Stops the stream and forgets what it showed (signed out: the next user starts afresh). */
export function stopInstanceWatch(): void {
  running?.abort();
  running = undefined;
  instances.clear();
  watchState.synced = false;
  watchState.connected = false;
  watchState.project = "";
  watchState.error = "";
  watchState.changes = [];
}

export function changesOf(project: string, name: string): Change[] {
  return watchState.changes.filter((c) => c.name === name && c.project === (project || "default"));
}

function change(kind: ChangeKind, i: Instance, time: Date): Change {
  return {
    id: nextId++,
    time,
    kind,
    project: i.project || "default",
    name: i.name,
    state: kind === "deleted" ? "Deleted" : instanceState(i),
    node: i.status?.node ?? "",
    message: kind === "deleted" ? "" : (i.status?.message ?? ""),
  };
}

function record(kind: ChangeKind, i: Instance): void {
  watchState.changes.unshift(change(kind, i, new Date()));
  if (watchState.changes.length > MAX_CHANGES) watchState.changes.length = MAX_CHANGES;
}

/** Before any change arrives, the latest known one of each instance: its last status update. */
function seed(): void {
  const known = [...instances.values()].map((i) => change("changed", i, toDate(i.status?.updateTime ?? i.createTime) ?? new Date(0)));
  known.sort((a, b) => b.time.getTime() - a.time.getTime());
  watchState.changes = known.slice(0, 20);
}

/** Applies one instance as it is now; records it when what a person would notice changed. */
function apply(i: Instance, live: boolean): void {
  const before = instances.get(keyOf(i));
  instances.set(keyOf(i), markRaw(i));
  if (!live) return;
  if (!before) record("created", i);
  else if (instanceState(before) !== instanceState(i) || (before.status?.message ?? "") !== (i.status?.message ?? "")) record("changed", i);
}

function remove(key: string, live: boolean): void {
  const before = instances.get(key);
  if (!before) return;
  instances.delete(key);
  if (live) record("deleted", before);
}

async function run(signal: AbortSignal, project: string): Promise<void> {
  let attempt = 0;
  while (!signal.aborted) {
    // Until SYNCED, this connection is (re)reading the full list: remember what it names.
    let seen: Set<string> | undefined = new Set();
    try {
      for await (const res of instanceClient.watchInstances({ project }, { signal })) {
        if (signal.aborted) return; // stopped (signed out): what is still arriving is not shown
        watchState.connected = true;
        watchState.error = "";
        attempt = 0;
        const i = res.instance;
        switch (res.type) {
          case EventType.ADDED:
          case EventType.MODIFIED:
            if (!i) break;
            seen?.add(keyOf(i));
            // A first sync fills the table quietly; a resync reports what changed while we were away.
            apply(i, watchState.synced);
            break;
          case EventType.DELETED:
            if (i) remove(keyOf(i), true);
            break;
          case EventType.SYNCED:
            if (seen) for (const key of [...instances.keys()]) if (!seen.has(key)) remove(key, watchState.synced);
            seen = undefined;
            if (!watchState.synced) seed();
            watchState.synced = true;
            break;
        }
      }
      if (!signal.aborted) watchState.error = "the server closed the instance stream";
    } catch (e) {
      if (signal.aborted) return;
      watchState.error = errorText(e);
    }
    watchState.connected = false;
    const wait = BACKOFF_MS[Math.min(attempt++, BACKOFF_MS.length - 1)]!;
    await new Promise((r) => setTimeout(r, wait));
  }
}
