// The mock runtime is healthy when its state directory is writable: that is all it needs.
import { access, constants, mkdir } from "node:fs/promises";
import type { Fingerprint } from "../driver/index.js";
import type { MockDriverOptions } from "./config.js";

export const MOCK_VERSION = "1.0.0";

export async function fingerprintMock(opts: MockDriverOptions, instances: number): Promise<Fingerprint> {
  const attributes: Record<string, string> = { state_dir: opts.stateDir, instances: String(instances) };
  if (opts.capacity?.vcpus !== undefined) attributes.capacity_vcpus = String(opts.capacity.vcpus);
  if (opts.capacity?.memoryMiB !== undefined) attributes.capacity_memory_mib = String(opts.capacity.memoryMiB);
  try {
    await mkdir(opts.stateDir, { recursive: true });
    await access(opts.stateDir, constants.W_OK);
    return { healthy: true, version: MOCK_VERSION, message: "", attributes };
  } catch (e) {
    return {
      healthy: false,
      version: MOCK_VERSION,
      message: `state dir ${opts.stateDir} is not writable: ${(e as Error).message}`,
      attributes,
    };
  }
}
