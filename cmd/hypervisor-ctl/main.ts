#!/usr/bin/env node
// hypervisor-ctl entry point: wires the process (argv, stdio, env, signals) to internal/ctl.
import { run } from "../../internal/ctl/index.js";
import { abortOnSignals } from "../../pkg/daemon/index.js";

// First Ctrl-C cancels the running call or watch cleanly; a second one gives up at once, so a
// stuck connection never traps the user.
const { signal, dispose } = abortOnSignals();
const code = await run(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
  env: process.env,
  signal,
});
// exitCode rather than exit(): stdout may still be flushing into a pipe.
process.exitCode = code;
dispose();
