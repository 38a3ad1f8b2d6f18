// Entry point of the isola_worker extension: runs once, at snapshot time.
import { workerInternals } from "ext:isola_worker/01_worker.js";

// The runtime takes this right after an isolate starts, before any worker
// code runs, and removes it together with `Deno` and `__bootstrap` (deno_core
// still reads `Deno.core` while it restores an isolate from the snapshot, so
// they cannot go before then). Workers have no `Deno` namespace.
Object.defineProperty(globalThis, "__isolaInternals", {
  value: workerInternals,
  configurable: true,
  enumerable: false,
  writable: false,
});
