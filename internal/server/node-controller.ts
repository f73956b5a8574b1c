/*
 * The node controller (leader only) watches agent liveness. A node whose lease expired is
 * NotReady (readiness is derived from alive/<node> wherever it is shown); this controller logs
 * the transitions and keeps the node gauges current. Re-scheduling the instances of
 * a dead node (HA restart) builds on it.
 */
import { keys } from "../../pkg/cluster/state/index.js";
import type { Logger } from "../../pkg/log/index.js";
import type { ServerContext } from "./context.js";
import { kickedLoop } from "./kicked-loop.js";
import { metrics } from "./metrics.js";

export class NodeController {
  private readonly log: Logger;
  private readonly ready = new Map<string, boolean>();

  constructor(private readonly ctx: ServerContext) {
    this.log = ctx.log.child({ component: "node-controller" });
  }

  async run(signal: AbortSignal): Promise<void> {
    const { informers } = this.ctx;
    const loop = kickedLoop(async () => (this.pass(), false), 5000, this.log, 1000);
    const offs = [informers.nodes.subscribe(loop.kick), informers.alive.subscribe(loop.kick)];
    try {
      await loop.run(signal);
    } finally {
      offs.forEach((off) => off());
    }
  }

  pass(): void {
    const { informers } = this.ctx;
    let ready = 0;
    let notReady = 0;
    for (const { value: n } of informers.nodes.items.values()) {
      const now = informers.alive.get(keys.alive(n.name)) !== undefined;
      const before = this.ready.get(n.name);
      if (before !== now) {
        // A node registers before its first heartbeat: NotReady is news only after Ready.
        if (now) this.log.info({ node: n.name }, "node is Ready");
        else if (before) this.log.warn({ node: n.name }, "node is NotReady: its heartbeat lease expired");
        this.ready.set(n.name, now);
      }
      if (now) ready++;
      else notReady++;
    }
    metrics.nodes.set({ condition: "ready" }, ready);
    metrics.nodes.set({ condition: "not_ready" }, notReady);
  }
}
