// Loaded by `init` in each isolate, never while the snapshot is built: any
// residual script's load makes deno_core give the ops their fast API forms
// (see `bindOps` in 01_worker.js). Nothing of its own.
(function () {})();
