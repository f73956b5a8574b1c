// The mock runtime is healthy when its state directory is writable (or it keeps state in memory):
// that is all it needs.
import { access, constants, mkdir } from "node:fs/promises";
import type { Fingerprint } from "../driver/index.js";
import type { MockDriverOptions } from "./config.js";

export const MOCK_VERSION = "1.0.0";

export async function fingerprintMock(opts: MockDriverOptions, instances: number): Promise<Fingerprint> {
  const dir = opts.stateDir;
  const attributes: Record<string, string> = { state_dir: dir ?? "(memory)", instances: String(instances) };
  if (opts.capacity?.vcpus !== undefined) attributes.capacity_vcpus = String(opts.capacity.vcpus);
  if (opts.capacity?.memoryMiB !== undefined) attributes.capacity_memory_mib = String(opts.capacity.memoryMiB);
  if (dir === undefined) return { healthy: true, version: MOCK_VERSION, message: "", attributes };
  try {
    await mkdir(dir, { recursive: true });
    await access(dir, constants.W_OK);
    return { healthy: true, version: MOCK_VERSION, message: "", attributes };
  } catch (e) {
    return {
      healthy: false,
      version: MOCK_VERSION,
      message: `state dir ${dir} is not writable: ${(e as Error).message}`,
      attributes,
    };
  }
}
