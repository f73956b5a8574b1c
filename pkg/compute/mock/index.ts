// The mock driver: a real, scriptable Driver (run_for, exit_code, start_error, start_delay,
// stop_delay in the instance's driver config) whose state is one JSON file per instance, so it
// survives agent restarts. For tests and scale benchmarks, never for production workloads.
export { MockDriver, MOCK_DRIVER_NAME, createMockDriver, type MockCounters } from "./driver.js";
export { parseBehaviour, parseDuration, type MockBehaviour, type MockDriverOptions } from "./config.js";
export { MOCK_VERSION } from "./fingerprint.js";
