// Nodes change rarely and have no watch in the API: pages that show them refresh every few
// seconds while the tab is visible (instances, which do change, come from the live stream).
import { onBeforeUnmount, onMounted, ref, shallowRef } from "vue";
import type { Node } from "../../../api/gen/hypervisor/v1/node_pb.js";
import { nodeClient, errorText } from "../api/index.js";

const REFRESH_MS = 5000;

/** Runs `load` on mount and every few seconds while mounted and visible; errors land in `error`. */
export function useRefresh(load: (signal: AbortSignal) => Promise<void>) {
  const error = ref("");
  const loading = ref(true);
  const abort = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let inFlight: Promise<void> | undefined;

  const once = async () => {
    try {
      await load(abort.signal);
      error.value = "";
    } catch (e) {
      if (!abort.signal.aborted) error.value = errorText(e);
    } finally {
      loading.value = false;
    }
  };
  /** Loads now (or joins the load under way), then again after the period. */
  const refresh = (): Promise<void> => {
    clearTimeout(timer);
    inFlight ??= once().finally(() => {
      inFlight = undefined;
      if (!abort.signal.aborted) timer = setTimeout(() => void (document.visibilityState === "visible" ? refresh() : retry()), REFRESH_MS);
    });
    return inFlight;
  };
  const retry = () => {
    timer = setTimeout(() => void (document.visibilityState === "visible" ? refresh() : retry()), REFRESH_MS);
  };
  onMounted(() => void refresh());
  onBeforeUnmount(() => {
    abort.abort();
    clearTimeout(timer);
  });
  return { error, loading, refresh };
}

export function useNodes() {
  const nodes = shallowRef<Node[]>([]);
  const r = useRefresh(async (signal) => {
    const res = await nodeClient.listNodes({}, { signal });
    nodes.value = res.nodes.sort((a, b) => a.name.localeCompare(b.name));
  });
  return { nodes, ...r };
}
