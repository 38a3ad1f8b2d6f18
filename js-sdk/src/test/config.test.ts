import { test } from "node:test";
import assert from "node:assert/strict";
import { loadConfig, ConfigError, didYouMean, readDevVars } from "../config.js";
import { join } from "node:path";
import { cleanup, tempDir, write } from "./helpers.js";

function withDir(fn: (dir: string) => void): void {
  const dir = tempDir();
  try {
    fn(dir);
  } finally {
    cleanup(dir);
  }
}

test("isola.toml: the supported keys", () =>
  withDir((dir) => {
    write(
      dir,
      "isola.toml",
      `name = "api"
main = "src/index.ts"
compatibility_date = "2026-11-01"
routes = ["api.example.com/*", { pattern = "example.com/api/*" }]
[vars]
GREETING = "hi"
COUNT = 3
[limits]
cpu_ms = 20
memory_mb = 64
subrequests = 10
[[rules]]
type = "Text"
globs = ["**/*.md"]
[build]
command = "echo hi"
`,
    );
    const c = loadConfig(dir);
    assert.equal(c.name, "api");
    assert.equal(c.main, "src/index.ts");
    assert.equal(c.compatibility_date, "2026-11-01");
    assert.deepEqual(c.routes, ["api.example.com/*", "example.com/api/*"]);
    assert.deepEqual(c.vars, { GREETING: "hi", COUNT: 3 });
    assert.deepEqual(c.limits, { cpu_ms: 20, memory_mb: 64, subrequests: 10 });
    assert.deepEqual(c.rules, [{ type: "Text", globs: ["**/*.md"] }]);
    assert.equal(c.build?.command, "echo hi");
    assert.deepEqual(c.warnings, []);
    assert.equal(c.wrangler, false);
  }));

test("unknown key in isola.toml: error with file, line and a suggestion", () =>
  withDir((dir) => {
    const file = write(dir, "isola.toml", `name = "api"\nmain = "src/index.js"\n\ncompatability_date = "2026-11-01"\n`);
    assert.throws(
      () => loadConfig(dir),
      (e: unknown) => {
        assert.ok(e instanceof ConfigError);
        assert.match(e.message, new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}:4: `));
        assert.match(e.message, /unknown key `compatability_date`; did you mean `compatibility_date`\?/);
        return true;
      },
    );
  }));

test("[build] watch_dir: a folder or a list of them; anything else is an error on its line", () =>
  withDir((dir) => {
    write(dir, "isola.toml", `name = "a"\n[build]\ncommand = "make"\nwatch_dir = "lib"\n`);
    assert.deepEqual(loadConfig(dir).build, { command: "make", watch_dir: ["lib"] });
    write(dir, "isola.toml", `name = "a"\n[build]\ncommand = "make"\nwatch_dir = ["lib", "assets"]\n`);
    assert.deepEqual(loadConfig(dir).build?.watch_dir, ["lib", "assets"]);
    write(dir, "isola.toml", `name = "a"\n[build]\ncommand = "make"\nwatch_dir = 3\n`);
    assert.throws(() => loadConfig(dir), /isola\.toml:4: `?build\.watch_dir`? must be a folder or a list of folders/);
  }));

test("unknown key inside a table and inside [env.NAME] names the right line", () =>
  withDir((dir) => {
    write(dir, "isola.toml", `name = "a"\n[limits]\ncpu_ms = 5\nmemroy_mb = 3\n`);
    assert.throws(() => loadConfig(dir), /isola\.toml:4: unknown key `limits\.memroy_mb`; did you mean `memory_mb`/);
    write(dir, "isola.toml", `name = "a"\n[env.staging]\nname = "b"\nroottes = ["x/*"]\n`);
    assert.throws(() => loadConfig(dir), /isola\.toml:4: unknown key `env\.staging\.roottes`; did you mean `routes`/);
  }));

test("an unknown key with nothing close gets no suggestion", () =>
  withDir((dir) => {
    write(dir, "isola.toml", `zzzzzzzzzz = 1\n`);
    assert.throws(() => loadConfig(dir), (e: unknown) => e instanceof Error && /unknown key `zzzzzzzzzz`$/.test(e.message));
  }));

test("isola.jsonc: comments, trailing commas, unknown key line", () =>
  withDir((dir) => {
    write(dir, "isola.jsonc", `{\n  // the worker\n  "name": "j",\n  "vars": { "A": "1", "B": { "x": [1] } },\n}\n`);
    const c = loadConfig(dir);
    assert.equal(c.name, "j");
    assert.deepEqual(c.vars, { A: "1", B: { x: [1] } });
    write(dir, "isola.jsonc", `{\n  "name": "j",\n  "mian": "x.js"\n}\n`);
    assert.throws(() => loadConfig(dir), /isola\.jsonc:3: unknown key `mian`; did you mean `main`/);
  }));

test("isola.toml wins over wrangler.toml; isola.json is found", () =>
  withDir((dir) => {
    write(dir, "wrangler.toml", `name = "w"\n`);
    write(dir, "isola.json", `{"name": "i"}`);
    assert.equal(loadConfig(dir).name, "i");
    write(dir, "isola.toml", `name = "t"\n`);
    assert.equal(loadConfig(dir).name, "t");
  }));

test("wrangler.toml is read as is with ONE warning naming unsupported keys", () =>
  withDir((dir) => {
    write(
      dir,
      "wrangler.toml",
      `name = "w"\nmain = "src/index.js"\naccount_id = "abc"\nworkers_dev = true\n[[kv_namespaces]]\nbinding = "KV"\nid = "x"\n[triggers]\ncrons = ["* * * * *"]\n`,
    );
    const c = loadConfig(dir);
    assert.equal(c.name, "w");
    assert.equal(c.wrangler, true);
    assert.equal(c.warnings.length, 1);
    assert.match(c.warnings[0]!, /account_id, workers_dev/);
    assert.doesNotMatch(c.warnings[0]!, /\b(triggers|crons|name|main|kv_namespaces)\b/);
    assert.doesNotMatch(c.warnings[0]!, /not supported by this server yet/);
    assert.deepEqual(c.triggers, { crons: ["* * * * *"] });
    assert.deepEqual(c.kv_namespaces, [{ binding: "KV", id: "x" }]);
  }));

test("wrangler.jsonc is read too", () =>
  withDir((dir) => {
    write(dir, "wrangler.jsonc", `{ "name": "wj", "observability": { "enabled": true } }`);
    const c = loadConfig(dir);
    assert.equal(c.name, "wj");
    assert.match(c.warnings[0]!, /ignores keys it does not support: observability/);
  }));

test("isola.toml: triggers, services, kv_namespaces and queues are read, with no warning", () =>
  withDir((dir) => {
    write(
      dir,
      "isola.toml",
      `name = "a"
[triggers]
crons = ["0 * * * *", "*/5 * * * *"]
[[services]]
binding = "AUTH"
service = "auth-worker"
[[services]]
binding = "RPC"
service = "rpc-worker"
entrypoint = "Api"
[[kv_namespaces]]
binding = "CACHE"
id = "abc"
[[queues.producers]]
binding = "JOBS"
queue = "jobs"
[[queues.consumers]]
queue = "jobs"
max_batch_size = 10
max_retries = 3
dead_letter_queue = "jobs-dlq"
retry_delay = 30
`,
    );
    const c = loadConfig(dir);
    assert.deepEqual(c.triggers, { crons: ["0 * * * *", "*/5 * * * *"] });
    assert.deepEqual(c.services, [
      { binding: "AUTH", service: "auth-worker" },
      { binding: "RPC", service: "rpc-worker", entrypoint: "Api" },
    ]);
    assert.deepEqual(c.kv_namespaces, [{ binding: "CACHE", id: "abc" }]);
    assert.deepEqual(c.queues, {
      producers: [{ binding: "JOBS", queue: "jobs" }],
      consumers: [{ queue: "jobs", max_batch_size: 10, max_retries: 3, dead_letter_queue: "jobs-dlq", retry_delay: 30 }],
    });
    assert.deepEqual(c.warnings, []);
    // No [triggers] table: undefined (deploy leaves the schedules alone); an empty list clears.
    write(dir, "isola.toml", `name = "a"\n`);
    assert.equal(loadConfig(dir).triggers, undefined);
    assert.deepEqual(loadConfig(dir).services, []);
    write(dir, "isola.toml", `name = "a"\n[triggers]\ncrons = []\n`);
    assert.deepEqual(loadConfig(dir).triggers, { crons: [] });
    assert.deepEqual(loadConfig(dir).warnings, []);
    // kv_namespaces alone: no warning (the server takes them).
    write(dir, "isola.toml", `name = "a"\n[[kv_namespaces]]\nbinding = "CACHE"\nid = "abc"\n`);
    assert.deepEqual(loadConfig(dir).warnings, []);
  }));

test("unknown keys and bad shapes in triggers, services, kv_namespaces, queues name file and line", () =>
  withDir((dir) => {
    const bad = (text: string, re: RegExp): void => {
      write(dir, "isola.toml", text);
      assert.throws(() => loadConfig(dir), re);
    };
    bad(`name = "a"\n[[services]]\nbinding = "A"\nservice = "a"\n[[services]]\nbinding = "B"\nservise = "b"\n`, /isola\.toml:7: unknown key `services\[1\]\.servise`; did you mean `service`\?/);
    bad(`name = "a"\nservices = [\n  { binding = "A", service = "a" },\n  { binding = "B", service = "b", entry_point = "X" },\n]\n`, /isola\.toml:4: unknown key `services\[1\]\.entry_point`; did you mean `entrypoint`\?/);
    bad(`name = "a"\nservices = [{ binding = "A", service = "a", env = "x" }]\n`, /isola\.toml:2: unknown key `services\[0\]\.env`/);
    bad(`name = "a"\n[[services]]\nbinding = "A"\n`, /isola\.toml:2: `services\[0\]` needs `service`/);
    bad(`name = "a"\n[[services]]\nbinding = 3\nservice = "a"\n`, /isola\.toml:3: `services\[0\]\.binding` must be a non-empty string/);
    bad(`name = "a"\nservices = { binding = "A" }\n`, /isola\.toml:2: `services` must be a list/);
    bad(`name = "a"\n[triggers]\ncron = ["* * * * *"]\n`, /isola\.toml:3: unknown key `triggers\.cron`; did you mean `crons`\?/);
    bad(`name = "a"\n[triggers]\ncrons = "* * * * *"\n`, /isola\.toml:3: `triggers\.crons` must be a list of cron expressions/);
    bad(`name = "a"\n[[kv_namespaces]]\nbinding = "K"\nid = "x"\npreview_id = "y"\n`, /isola\.toml:5: unknown key `kv_namespaces\[0\]\.preview_id`/);
    bad(`name = "a"\n[[queues.consumers]]\nqueue = "q"\nmax_batch_size = "ten"\n`, /isola\.toml:4: `queues\.consumers\[0\]\.max_batch_size` must be a whole number/);
    bad(`name = "a"\n[[queues.consumers]]\nqueue = "q"\nretry_delay = -5\n`, /isola\.toml:4: `queues\.consumers\[0\]\.retry_delay` must be a whole number/);
    bad(`name = "a"\n[[queues.consumers]]\nqueue = "q"\nmax_concurency = 2\n`, /isola\.toml:4: unknown key `queues\.consumers\[0\]\.max_concurency`/);
    bad(`name = "a"\n[[queues.producers]]\nbinding = "Q"\n`, /isola\.toml:2: `queues\.producers\[0\]` needs `queue`/);
    bad(`name = "a"\n[queues]\nproducer = []\n`, /isola\.toml:3: unknown key `queues\.producer`; did you mean `producers`\?/);
    bad(`name = "a"\n[env.prod]\n[[env.prod.services]]\nbinding = "A"\nservice = "a"\nbogus = 1\n`, /isola\.toml:6: unknown key `env\.prod\.services\[0\]\.bogus`/);
    write(dir, "isola.jsonc", `{\n  "name": "a",\n  "services": [\n    { "binding": "A", "service": "a" },\n    { "binding": "B", "service": "b", "bogus": 1 }\n  ]\n}\n`);
    write(dir, "isola.toml", "");
    assert.throws(() => loadConfig(join(dir, "isola.jsonc")), /isola\.jsonc:5: unknown key `services\[1\]\.bogus`/);
  }));

test("[env.NAME]: triggers are inherited unless the env has its own; bindings are not inherited", () =>
  withDir((dir) => {
    write(
      dir,
      "wrangler.toml",
      `name = "w"\n[triggers]\ncrons = ["0 0 * * *"]\n[[services]]\nbinding = "A"\nservice = "a"\n[env.staging]\n[env.prod]\n[env.prod.triggers]\ncrons = ["*/5 * * * *"]\n[[env.prod.services]]\nbinding = "B"\nservice = "b-prod"\nentrypoint = "Api"\n`,
    );
    assert.deepEqual(loadConfig(dir).triggers, { crons: ["0 0 * * *"] });
    assert.deepEqual(loadConfig(dir, { env: "staging" }).triggers, { crons: ["0 0 * * *"] });
    assert.deepEqual(loadConfig(dir, { env: "staging" }).services, []);
    const prod = loadConfig(dir, { env: "prod" });
    assert.deepEqual(prod.triggers, { crons: ["*/5 * * * *"] });
    assert.deepEqual(prod.services, [{ binding: "B", service: "b-prod", entrypoint: "Api" }]);
    assert.deepEqual(prod.warnings, []);
  }));

test("wrangler.toml: extra keys inside entries are named in the one warning, not fatal", () =>
  withDir((dir) => {
    write(
      dir,
      "wrangler.toml",
      `name = "w"\nworkers_dev = true\n[[kv_namespaces]]\nbinding = "K"\nid = "x"\npreview_id = "y"\n[[services]]\nbinding = "S"\nservice = "s"\nenvironment = "production"\n`,
    );
    const c = loadConfig(dir);
    assert.equal(c.warnings.length, 1);
    assert.match(c.warnings[0]!, /does not support: workers_dev, kv_namespaces\[0\]\.preview_id, services\[0\]\.environment$/);
    assert.deepEqual(c.services, [{ binding: "S", service: "s" }]);
    assert.deepEqual(c.kv_namespaces, [{ binding: "K", id: "x" }]);
  }));

test("[env.NAME]: inherits main/routes/limits, not vars; name gets the suffix; overrides win", () =>
  withDir((dir) => {
    write(
      dir,
      "isola.toml",
      `name = "app"\nmain = "src/index.js"\nroutes = ["app.test/*"]\n[vars]\nA = "top"\n[limits]\ncpu_ms = 10\n[env.staging]\nroutes = ["staging.app.test/*"]\n[env.staging.vars]\nB = "stage"\n[env.prod]\nname = "app-production"\n`,
    );
    const top = loadConfig(dir);
    assert.deepEqual(top.vars, { A: "top" });
    const s = loadConfig(dir, { env: "staging" });
    assert.equal(s.name, "app-staging");
    assert.equal(s.main, "src/index.js");
    assert.deepEqual(s.routes, ["staging.app.test/*"]);
    assert.deepEqual(s.vars, { B: "stage" });
    assert.deepEqual(s.limits, { cpu_ms: 10 });
    const p = loadConfig(dir, { env: "prod" });
    assert.equal(p.name, "app-production");
    assert.deepEqual(p.routes, ["app.test/*"]);
    assert.deepEqual(p.vars, {});
    assert.throws(() => loadConfig(dir, { env: "dev" }), /no \[env\.dev\] section \(there are: staging, prod\)/);
  }));

test("type errors name file and line", () =>
  withDir((dir) => {
    write(dir, "isola.toml", `name = "a"\n[limits]\ncpu_ms = "fast"\n`);
    assert.throws(() => loadConfig(dir), /isola\.toml:3: `limits\.cpu_ms` must be a positive whole number/);
    write(dir, "isola.toml", `name = "a"\nroutes = "x/*"\n`);
    assert.throws(() => loadConfig(dir), /isola\.toml:2: `routes` must be a list/);
    write(dir, "isola.toml", `name = "a"\n[[rules]]\ntype = "Txt"\nglobs = ["*.md"]\n`);
    assert.throws(() => loadConfig(dir), /did you mean `Text`/);
  }));

test("invalid TOML names file:line:column", () =>
  withDir((dir) => {
    write(dir, "isola.toml", `name = "a"\nmain = \n`);
    assert.throws(() => loadConfig(dir), /isola\.toml:2:\d+: invalid TOML/);
  }));

test("no config: a message saying how to create one", () =>
  withDir((dir) => {
    assert.throws(() => loadConfig(dir), /isola init/);
  }));

test("didYouMean and .dev.vars", () =>
  withDir((dir) => {
    assert.equal(didYouMean("nmae", ["name", "main"]), "name");
    assert.equal(didYouMean("qqqqq", ["name", "main"]), undefined);
    write(dir, ".dev.vars", `# local\nTOKEN=abc\nQUOTED="a b"\n\nexport X=1\n`);
    assert.deepEqual(readDevVars(dir), { TOKEN: "abc", QUOTED: "a b", X: "1" });
  }));

test("an unquoted TOML date is read as its text", () =>
  withDir((dir) => {
    write(dir, "isola.toml", `name = "a"\ncompatibility_date = 2026-11-01\n`);
    assert.equal(loadConfig(dir).compatibility_date, "2026-11-01");
  }));

test("wrangler's singular `route` is read too, and an env's own routes replace it", () =>
  withDir((dir) => {
    write(dir, "wrangler.toml", `name = "w"\nroute = "w.test/*"\n[env.prod]\nroutes = [{ pattern = "prod.test/*", zone_name = "prod.test" }]\n`);
    assert.deepEqual(loadConfig(dir).routes, ["w.test/*"]);
    assert.deepEqual(loadConfig(dir, { env: "prod" }).routes, ["prod.test/*"]);
    assert.deepEqual(loadConfig(dir).warnings, []);
  }));
