import { test } from "node:test";
import assert from "node:assert/strict";
import { loadConfig, ConfigError, didYouMean, readDevVars } from "../config.js";
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
    assert.match(c.warnings[0]!, /kv_namespaces, triggers\.crons are accepted but not supported by the Isola server yet/);
  }));

test("wrangler.jsonc is read too", () =>
  withDir((dir) => {
    write(dir, "wrangler.jsonc", `{ "name": "wj", "observability": { "enabled": true } }`);
    const c = loadConfig(dir);
    assert.equal(c.name, "wj");
    assert.match(c.warnings[0]!, /ignores keys it does not support: observability/);
  }));

test("isola.toml: crons, services, queues are accepted with a warning", () =>
  withDir((dir) => {
    write(dir, "isola.toml", `name = "a"\n[triggers]\ncrons = ["0 * * * *"]\n[[services]]\nbinding = "S"\nservice = "s"\n[queues]\n`);
    const c = loadConfig(dir);
    assert.equal(c.warnings.length, 1);
    assert.match(c.warnings[0]!, /triggers\.crons, services, queues are accepted but not supported by the Isola server yet/);
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
