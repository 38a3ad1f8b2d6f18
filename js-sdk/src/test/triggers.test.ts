// deploy's triggers, services and --json, `isola triggers deploy`, progress on a TTY and the
// secret prompt, against a stand-in API that records what the CLI sends.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { devEdgeArgs } from "../edge.js";
import { fakeApi, type FakeApi } from "./fakeapi.js";
import { cleanup, runCli, runCliInTty, scriptBinary, tempDir, write } from "./helpers.js";

const noScript = scriptBinary() ? false : "no `script` (util-linux) to run the CLI on a pseudo-terminal";

async function project(
  config: string,
  fn: (o: { dir: string; api: FakeApi; isola: (args: string[], input?: string) => ReturnType<typeof runCli>; env: NodeJS.ProcessEnv }) => Promise<void>,
): Promise<void> {
  const dir = tempDir();
  const api = await fakeApi();
  try {
    write(dir, "isola.toml", config);
    write(dir, "src/index.ts", `export default { fetch: () => new Response("hi") };\n`);
    const env = { ...process.env, XDG_CONFIG_HOME: join(dir, "home"), ISOLA_API_URL: api.url, ISOLA_API_TOKEN: "t0ken" };
    await fn({ dir, api, env, isola: (args, input) => runCli(args, { cwd: dir, env, ...(input !== undefined ? { input } : {}) }) });
  } finally {
    await api.close();
    cleanup(dir);
  }
}

const calls = (api: FakeApi): string[] => api.requests.map((r) => `${r.method} ${r.path}`);

test("deploy: upload with services, deploy, routes, then PUT schedules; printed after the routes", () =>
  project(
    `name = "cron-app"\nmain = "src/index.ts"\nroutes = ["cron.test/*"]\n[triggers]\ncrons = ["*/5 * * * *", "0 3 * * 1"]\n[[services]]\nbinding = "AUTH"\nservice = "auth"\n[[services]]\nbinding = "API"\nservice = "api"\nentrypoint = "Rpc"\n`,
    async ({ api, isola }) => {
      const r = await isola(["deploy"]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(calls(api), [
        "POST /v1/workers/cron-app/versions",
        "POST /v1/workers/cron-app/deployments",
        "POST /v1/routes",
        "PUT /v1/workers/cron-app/schedules",
      ]);
      const upload = api.requests[0]!.body as { metadata: Record<string, unknown>; modules: string[] };
      assert.deepEqual(upload.metadata["services"], [
        { binding: "AUTH", service: "auth" },
        { binding: "API", service: "api", entrypoint: "Rpc" },
      ]);
      assert.equal("triggers" in upload.metadata, false);
      assert.deepEqual(api.requests[3]!.body, { crons: ["*/5 * * * *", "0 3 * * 1"] });
      assert.match(r.stdout, /Route cron\.test\/\*\nSchedules: \*\/5 \* \* \* \*, 0 3 \* \* 1\n$/);
      assert.equal(r.stderr, "", "no warning, no progress off a terminal");
    },
  ));

test("deploy --json: one JSON document with the version, deployment, routes and crons", () =>
  project(`name = "j"\nmain = "src/index.ts"\nroutes = ["j.test/*"]\n[triggers]\ncrons = ["0 * * * *"]\n`, async ({ isola }) => {
    const r = await isola(["deploy", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { worker: string; version: { id: string }; deployment: { id: number }; routes: { pattern: string }[]; crons: string[] };
    assert.equal(doc.worker, "j");
    assert.equal(doc.version.id, "v1");
    assert.deepEqual(doc.routes.map((x) => x.pattern), ["j.test/*"]);
    assert.deepEqual(doc.crons, ["0 * * * *"]);
  }));

test("deploy: no [triggers] leaves the schedules alone; an empty list clears them", () =>
  project(`name = "n"\nmain = "src/index.ts"\n`, async ({ dir, api, isola }) => {
    const r = await isola(["deploy"]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!calls(api).some((c) => c.includes("schedules")), calls(api).join("\n"));
    assert.doesNotMatch(r.stdout, /Schedules/);
    const j = JSON.parse((await isola(["deploy", "--json"])).stdout) as Record<string, unknown>;
    assert.equal("crons" in j, false);
    assert.equal("services" in ((api.requests[0]!.body as { metadata: object }).metadata), false);
    write(dir, "isola.toml", `name = "n"\nmain = "src/index.ts"\n[triggers]\ncrons = []\n`);
    api.requests.length = 0;
    const c = await isola(["deploy"]);
    assert.equal(c.code, 0, c.stderr);
    assert.deepEqual(api.requests.at(-1), { method: "PUT", path: "/v1/workers/n/schedules", body: { crons: [] } });
    assert.match(c.stdout, /Schedules: none \(cleared\)/);
  }));

test("deploy: a cron the server refuses prints its message and exits 1", () =>
  project(`name = "b"\nmain = "src/index.ts"\n[triggers]\ncrons = ["bad cron"]\n`, async ({ isola }) => {
    const r = await isola(["deploy"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /invalid: cron expression "bad cron" is not valid: expected 5 fields \(HTTP 400\)/);
    assert.match(r.stderr, /hint: version v1 is deployed; fix `triggers\.crons` in .*isola\.toml and run `isola triggers deploy`/);
  }));

test("triggers deploy: only the schedules, per environment; no [triggers] is an error", () =>
  project(
    `name = "t"\nmain = "src/index.ts"\n[triggers]\ncrons = ["0 0 * * *"]\n[env.staging.triggers]\ncrons = ["*/10 * * * *"]\n[env.bare]\n`,
    async ({ dir, api, isola }) => {
      const r = await isola(["triggers", "deploy"]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(api.requests, [{ method: "PUT", path: "/v1/workers/t/schedules", body: { crons: ["0 0 * * *"] } }]);
      assert.match(r.stdout, /Schedules: 0 0 \* \* \*/);
      const s = await isola(["triggers", "deploy", "--env", "staging", "--json"]);
      assert.equal(s.code, 0, s.stderr);
      assert.deepEqual(JSON.parse(s.stdout), { worker: "t-staging", crons: ["*/10 * * * *"] });
      assert.deepEqual(api.requests[1], { method: "PUT", path: "/v1/workers/t-staging/schedules", body: { crons: ["*/10 * * * *"] } });
      // [env.bare] inherits the top-level triggers (wrangler's inheritable key).
      assert.equal((await isola(["triggers", "deploy", "--env", "bare"])).code, 0);
      assert.deepEqual(api.requests[2]!.body, { crons: ["0 0 * * *"] });
      write(dir, "isola.toml", `name = "t"\nmain = "src/index.ts"\n`);
      const none = await isola(["triggers", "deploy"]);
      assert.equal(none.code, 1);
      assert.match(none.stderr, /has no \[triggers\] table/);
      const bad = await isola(["triggers"]);
      assert.equal(bad.code, 2);
    },
  ));

test("deploy --dry-run: metadata.json has services and triggers; contacts nothing", () =>
  project(
    `name = "d"\nmain = "src/index.ts"\n[triggers]\ncrons = ["*/5 * * * *"]\n[[services]]\nbinding = "S"\nservice = "s"\nentrypoint = "E"\n`,
    async ({ dir, api, isola }) => {
      const r = await isola(["deploy", "--dry-run", "--outdir", "out"]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(readFileSync(join(dir, "out", "metadata.json"), "utf8")), {
        main_module: "index.js",
        vars: {},
        limits: {},
        services: [{ binding: "S", service: "s", entrypoint: "E" }],
        triggers: { crons: ["*/5 * * * *"] },
      });
      assert.match(r.stdout, /Schedules \(not applied\): \*\/5 \* \* \* \*/);
      assert.deepEqual(api.requests, []);
    },
  ));

test("deploy: kv_namespaces and queues warn once, are not sent, and do not fail", () =>
  project(
    `name = "k"\nmain = "src/index.ts"\n[[kv_namespaces]]\nbinding = "CACHE"\nid = "c1"\n[[queues.producers]]\nbinding = "JOBS"\nqueue = "jobs"\n[[queues.consumers]]\nqueue = "jobs"\nmax_retries = 2\n`,
    async ({ api, isola }) => {
      const r = await isola(["deploy"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr.match(/not supported by this server yet/g)?.length, 1, r.stderr);
      assert.match(r.stderr, /kv_namespaces and queues/);
      const metadata = (api.requests[0]!.body as { metadata: Record<string, unknown> }).metadata;
      assert.deepEqual(Object.keys(metadata).sort(), ["limits", "main_module", "vars"]);
    },
  ));

test("progress: none off a terminal; on a terminal, bundling and uploading show on stderr", { skip: noScript }, () =>
  project(`name = "p"\nmain = "src/index.ts"\n`, async ({ dir, env, isola }) => {
    const quiet = await isola(["deploy"]);
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.equal(quiet.stderr, "");
    assert.doesNotMatch(quiet.stdout, /Bundling|Uploading|\r/);
    const dry = await isola(["deploy", "--dry-run"]);
    assert.equal(dry.stderr, "");
    const tty = await runCliInTty(["deploy"], { cwd: dir, env });
    assert.equal(tty.code, 0, tty.output);
    assert.match(tty.output, /Bundling src\/index\.ts…/);
    assert.match(tty.output, /Uploading p \(1 module\(s\), [\d.]+ KiB\)…/);
    assert.match(tty.output, /Uploaded p: version v\d+/);
  }));

test("secret put: reads stdin when piped; prompts with hidden input on a terminal", { skip: noScript }, () =>
  project(`name = "s"\nmain = "src/index.ts"\n`, async ({ dir, api, env, isola }) => {
    const piped = await isola(["secret", "put", "TOKEN"], "from-pipe\n");
    assert.equal(piped.code, 0, piped.stderr);
    assert.doesNotMatch(piped.stderr + piped.stdout, /Value for/);
    assert.deepEqual(api.requests.at(-1), { method: "PUT", path: "/v1/workers/s/secrets/TOKEN", body: { value: "from-pipe" } });
    const tty = await runCliInTty(["secret", "put", "TOKEN"], {
      cwd: dir,
      env,
      converse: async ({ waitFor, type }) => {
        await waitFor(/Value for TOKEN: /);
        type("typed-s3cret\r");
      },
    });
    assert.equal(tty.code, 0, tty.output);
    assert.deepEqual(api.requests.at(-1), { method: "PUT", path: "/v1/workers/s/secrets/TOKEN", body: { value: "typed-s3cret" } });
    assert.doesNotMatch(tty.output, /typed-s3cret/, "the value was echoed");
    assert.match(tty.output, /Secret TOKEN set on s/);
  }));

test("dev: the isola-edge arguments for crons and --test-scheduled", () => {
  const base = { entry: "/b/index.js", listen: "127.0.0.1:8787", vars: { A: "x", N: 3 } };
  assert.deepEqual(devEdgeArgs(base), ["--log-format", "json", "dev", "/b/index.js", "--listen", "127.0.0.1:8787", "--var", "A=x", "--json-var", "N=3"]);
  assert.deepEqual(devEdgeArgs({ ...base, vars: {}, name: "w", cpuMs: 10, crons: ["*/5 * * * *", "0 0 * * *"], testScheduled: true }), [
    "--log-format",
    "json",
    "dev",
    "/b/index.js",
    "--listen",
    "127.0.0.1:8787",
    "--name",
    "w",
    "--cpu-ms",
    "10",
    "--cron",
    "*/5 * * * *",
    "--cron",
    "0 0 * * *",
    "--test-scheduled",
  ]);
  assert.equal(devEdgeArgs({ ...base, crons: [], testScheduled: false }).includes("--cron"), false);
});
