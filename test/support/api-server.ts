/*
 * An in-process hypervisor-server with access control on, for component tests of the API's
 * access and its clients: an embedded store in a temporary directory, real HTTP on a free
 * loopback port, and the bootstrap admin token the first start wrote to <dir>/pki/admin-token.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { ADMIN_TOKEN_FILE } from "../../internal/server/access/index.js";
import { Server, type ServerOptions } from "../../internal/server/server.js";

export interface AccessServer {
  dir: string;
  store: Store;
  server: Server;
  /** The bootstrap admin token. */
  admin: string;
  /** Stops the server, closes the store and removes the directory. */
  stop(): Promise<void>;
}

export async function startServerWithAccess(
  prefix: string,
  extra: Partial<Omit<ServerOptions, "store" | "access">> = {},
  /** A store of the caller's (etcd, say), which stop() leaves open; else an embedded one of its own. */
  given?: Store,
): Promise<AccessServer> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const store = given ?? (await openEmbeddedStore(join(dir, "store"), { sync: false }));
  const server = new Server({
    store,
    host: "127.0.0.1",
    port: 0,
    version: "test",
    controllers: false,
    ...extra,
    access: { bootstrapDir: join(dir, "pki") },
  });
  await server.start();
  const admin = (await readFile(join(dir, "pki", ADMIN_TOKEN_FILE), "utf8")).trim();
  return {
    dir,
    store,
    server,
    admin,
    async stop() {
      await server.stop();
      if (!given) await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
