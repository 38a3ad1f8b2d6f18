// deploy's triggers, services, kv_namespaces and --json, `isola triggers deploy`, --dry-run,
// progress on a TTY and the secret prompt, against a real isola-control and one isola-edge
// on loopback (ISOLA_CONTROL_BIN, ISOLA_EDGE_BIN): what the CLI sent is read back from the
// server (schedules, secrets, versions) or seen in what the edge serves.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { Client } from "../api.js";
import { devEdgeArgs } from "../edge.js";
import { startCluster, skipWithoutBinaries as skip, type Cluster } from "./cluster.js";
import { cleanup, get, poll, runCli, runCliInTty, scriptBinary, tempDir, write } from "./helpers.js";

const noScript = scriptBinary() ? false : "no `script` (util-linux) to run the CLI on a pseudo-terminal";

let dir = "";
let cluster: Cluster | undefined;
let env: NodeJS.ProcessEnv = {};
let client: Client;

before(async () => {
  if (skip) return;
  dir = tempDir();
  cluster = await startCluster(dir);
  env = { ...process.env, XDG_CONFIG_HOME: join(dir, "home"), ISOLA_API_URL: cluster.api, ISOLA_API_TOKEN: cluster.token };
  client = new Client({ api: cluster.api, token: cluster.token });
});

after(async () => {
  await cluster?.stop();
  if (dir) cleanup(dir);
});

/** A project folder with `config` and a worker answering `source` (default: "hi"). */
function project(name: string, config: string, source = `export default { fetch: () => new Response("hi") };\n`) {
  const app = join(dir, name);
  write(app, "isola.toml", config);
  write(app, "src/index.ts", source);
  return {
    app,
    isola: (args: string[], input?: string) => runCli(args, { cwd: app, env, ...(input !== undefined ? { input } : {}) }),
  };
}

const schedules = async (worker: string): Promise<string[]> =>
  (await client.request<{ crons: string[] }>("GET", `/v1/workers/${worker}/schedules`)).crons;

/** Polls the edge until `host` answers `body`. */
const serves = async (host: string, body: string): Promise<boolean> =>
  (await poll(30_000, async () => ((await get(cluster!.edgeHttp, "/", host))?.body === body ? true : undefined))) ?? false;

test("deploy: services and crons reach the server; routes then schedules are printed; the edge calls the bound worker", { skip }, async () => {
  const auth = project("auth", `name = "auth"\nmain = "src/index.ts"\n`, `export default { fetch: () => new Response("from auth") };\n`);
  assert.equal((await auth.isola(["deploy"])).code, 0);
  const { isola } = project(
    "cron-app",
    `name = "cron-app"\nmain = "src/index.ts"\nroutes = ["cron.test/*"]\n[triggers]\ncrons = ["*/5 * * * *", "0 3 * * 1"]\n[[services]]\nbinding = "AUTH"\nservice = "auth"\n`,
    `export default {
  async fetch(request: Request, env: { AUTH: Fetcher }): Promise<Response> {
    return new Response("via " + (await (await env.AUTH.fetch(request)).text()));
  },
  async scheduled(): Promise<void> {},
};
`,
  );
  const r = await isola(["deploy"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /Uploaded cron-app: version \S+[\s\S]*Deployed version[\s\S]*\nRoute cron\.test\/\*\nSchedules: \*\/5 \* \* \* \*, 0 3 \* \* 1\n$/);
  assert.equal(r.stderr, "", "no warning, no progress off a terminal");
  assert.deepEqual(await schedules("cron-app"), ["*/5 * * * *", "0 3 * * 1"]);
  assert.ok(await serves("cron.test", "via from auth"), "the edge never answered through the AUTH service binding");

  // A binding to a worker that does not exist: the server names services[0]; nothing deployed.
  const missing = project("orphan", `name = "orphan"\nmain = "src/index.ts"\n[[services]]\nbinding = "GONE"\nservice = "no-such-worker"\n`);
  const m = await missing.isola(["deploy"]);
  assert.equal(m.code, 1, m.stdout);
  assert.match(m.stderr, /invalid_request: .*services\[0\] binds "GONE" to worker "no-such-worker", which does not exist.*\(HTTP 400\)/);
});

test("deploy: kv_namespaces are sent (a real namespace deploys, an unknown id is refused naming kv_namespaces[0])", { skip }, async () => {
  const created = await runCli(["kv", "namespace", "create", "CACHE", "--json"], { cwd: dir, env });
  assert.equal(created.code, 0, created.stderr);
  const id = (JSON.parse(created.stdout) as { id: string }).id;
  const kvApp = `name = "k"\nmain = "src/index.ts"\nroutes = ["kv.test/*"]\n[[kv_namespaces]]\nbinding = "CACHE"\nid = "${id}"\n`;
  const { app, isola } = project("kv-app", kvApp);
  const r = await isola(["deploy"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "", "kv_namespaces are not warned about any more");
  assert.ok(await serves("kv.test", "hi"), "the edge never served the worker with a KV binding");

  write(app, "isola.toml", kvApp.replace(id, "no-such-namespace"));
  const bad = await isola(["deploy"]);
  assert.equal(bad.code, 1, bad.stdout);
  assert.match(bad.stderr, /invalid_request: .*kv_namespaces\[0\] binds "CACHE" to namespace "no-such-namespace", which does not exist.*\(HTTP 400\)/);

});

test("deploy: queues.producers go in the upload; queues.consumers are applied after the schedules (missing queues created)", { skip }, async () => {
  // The dead-letter queue exists; the consumed queue does not yet.
  const dlq = await runCli(["queues", "create", "orders-dlq"], { cwd: dir, env });
  assert.equal(dlq.code, 0, dlq.stderr);
  const base = `name = "orders"\nmain = "src/index.ts"\nroutes = ["orders.test/*"]\n[triggers]\ncrons = ["0 * * * *"]\n`;
  const queues = `[[queues.producers]]
binding = "ORDERS"
queue = "orders"
[[queues.producers]]
binding = "AUDIT"
queue = "audit"
[[queues.consumers]]
queue = "orders"
max_batch_size = 25
max_batch_timeout = 2
max_retries = 4
dead_letter_queue = "orders-dlq"
retry_delay = 30
[[queues.consumers]]
queue = "later"
`;
  const { app, isola } = project(
    "orders",
    base + queues,
    `export default {
  fetch: () => new Response("orders"),
  async scheduled(): Promise<void> {},
  async queue(batch: { ackAll(): void }): Promise<void> {
    batch.ackAll();
  },
};
`,
  );
  const r = await isola(["deploy"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    /\nSchedules: 0 \* \* \* \*\nCreated queue orders \(queues\.consumers\[0\] consumes it; it did not exist\)\nCreated queue later \(queues\.consumers\[1\] consumes it; it did not exist\)\nConsumer of queue orders: batch size 25, batch timeout 2 s, retries 4, dead-letter queue orders-dlq, retry delay 30 s\nConsumer of queue later: batch size 10, batch timeout 5 s, retries 3, no dead-letter queue, retry delay 0 s\n$/,
  );
  // The one producer whose queue does not exist is warned about; nothing else is.
  assert.equal(
    r.stderr,
    "warning: queues.producers[1]: env.AUDIT sends to queue audit, which does not exist; its send() calls fail until you run `isola queues create audit`\n",
  );
  assert.equal(r.stderr.match(/not supported/g), null);
  // Read back from the server.
  assert.deepEqual((await client.queue("orders")).consumer, {
    worker: "orders",
    max_batch_size: 25,
    max_batch_timeout: 2,
    max_retries: 4,
    dead_letter_queue: "orders-dlq",
    retry_delay: 30,
  });
  assert.deepEqual((await client.queue("later")).consumer, {
    worker: "orders",
    max_batch_size: 10,
    max_batch_timeout: 5,
    max_retries: 3,
    dead_letter_queue: null,
    retry_delay: 0,
  });
  assert.equal((await client.queues()).some((q) => q.name === "audit"), false, "producers' queues are not created");
  assert.ok(await serves("orders.test", "orders"), "the edge never served the worker with queue bindings");

  // --json: "consumers" after the crons; the queues exist now, so nothing is created.
  const j = await isola(["deploy", "--json"]);
  assert.equal(j.code, 0, j.stderr);
  const doc = JSON.parse(j.stdout) as { version: { hash: string }; crons: string[]; consumers: Record<string, unknown>[] };
  assert.deepEqual(doc.crons, ["0 * * * *"]);
  assert.deepEqual(doc.consumers, [
    { queue: "orders", created: false, worker: "orders", max_batch_size: 25, max_batch_timeout: 2, max_retries: 4, dead_letter_queue: "orders-dlq", retry_delay: 30 },
    { queue: "later", created: false, worker: "orders", max_batch_size: 10, max_batch_timeout: 5, max_retries: 3, dead_letter_queue: null, retry_delay: 0 },
  ]);
  assert.doesNotMatch(j.stderr, /Created queue/);

  // The producers are part of the upload (what the dry run writes is what is uploaded), and
  // they make a different version than the same code without them.
  assert.equal((await isola(["deploy", "--dry-run", "--outdir", "out"])).code, 0);
  const metadata = JSON.parse(readFileSync(join(app, "out", "metadata.json"), "utf8")) as Record<string, unknown>;
  assert.deepEqual(metadata["queues"], {
    producers: [
      { binding: "ORDERS", queue: "orders" },
      { binding: "AUDIT", queue: "audit" },
    ],
    consumers: [{ queue: "orders", max_batch_size: 25, max_batch_timeout: 2, max_retries: 4, dead_letter_queue: "orders-dlq", retry_delay: 30 }, { queue: "later" }],
  });
  write(app, "isola.toml", base);
  const without = await isola(["deploy", "--json"]);
  assert.equal(without.code, 0, without.stderr);
  const plain = JSON.parse(without.stdout) as { version: { hash: string } } & Record<string, unknown>;
  assert.notEqual(plain.version.hash, doc.version.hash);
  assert.equal("consumers" in plain, false);
  assert.equal((await client.queue("orders")).consumer?.worker, "orders", "a config without consumers leaves them alone");

  // A consumer setting the server refuses: its message, and a hint naming the entry; the version is deployed.
  write(app, "isola.toml", `${base}[[queues.consumers]]\nqueue = "orders"\nmax_batch_size = 500\n`);
  const bad = await isola(["deploy"]);
  assert.equal(bad.code, 1, bad.stdout);
  assert.match(bad.stderr, /invalid_request: max_batch_size is 500; use 1 to 100 \(HTTP 400\)/);
  assert.match(bad.stderr, /hint: version \S+ is deployed; fix `queues\.consumers\[0\]` \(queue orders\) in .*isola\.toml and run `isola deploy` again/);
  assert.equal((await client.queue("orders")).consumer?.max_batch_size, 25, "a refused consumer changes nothing");
});

test("deploy --json: one JSON document with the version, deployment, routes and crons", { skip }, async () => {
  const { isola } = project("j", `name = "j"\nmain = "src/index.ts"\nroutes = ["j.test/*"]\n[triggers]\ncrons = ["0 * * * *"]\n`);
  const r = await isola(["deploy", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as { worker: string; version: { id: string }; deployment: { versions: { id: string; percentage: number }[] }; routes: { pattern: string; existed: boolean }[]; crons: string[] };
  assert.equal(doc.worker, "j");
  assert.deepEqual(doc.deployment.versions.map((v) => [v.id, v.percentage]), [[doc.version.id, 100]]);
  assert.deepEqual((await client.versions("j")).map((v) => v.id), [doc.version.id]);
  assert.deepEqual(doc.routes, [{ pattern: "j.test/*", existed: false }]);
  assert.deepEqual(doc.crons, ["0 * * * *"]);
});

test("deploy: no [triggers] leaves the schedules alone; an empty list clears them", { skip }, async () => {
  const { app, isola } = project("n", `name = "n"\nmain = "src/index.ts"\n[triggers]\ncrons = ["15 * * * *"]\n`);
  assert.equal((await isola(["deploy"])).code, 0);
  assert.deepEqual(await schedules("n"), ["15 * * * *"]);
  write(app, "isola.toml", `name = "n"\nmain = "src/index.ts"\n`);
  const r = await isola(["deploy"]);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /Schedules/);
  const j = JSON.parse((await isola(["deploy", "--json"])).stdout) as Record<string, unknown>;
  assert.equal("crons" in j, false);
  assert.deepEqual(await schedules("n"), ["15 * * * *"], "a config without [triggers] changed the schedules");
  write(app, "isola.toml", `name = "n"\nmain = "src/index.ts"\n[triggers]\ncrons = []\n`);
  const c = await isola(["deploy"]);
  assert.equal(c.code, 0, c.stderr);
  assert.match(c.stdout, /Schedules: none \(cleared\)/);
  assert.deepEqual(await schedules("n"), []);
});

test("deploy: a cron the server refuses prints its message and a hint, exits 1; the version is deployed", { skip }, async () => {
  const { isola } = project("b", `name = "b"\nmain = "src/index.ts"\n[triggers]\ncrons = ["0 0 * * *", "* * * * funday"]\n`);
  const r = await isola(["deploy"]);
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /invalid_request: crons\[1\]: cron "\* \* \* \* funday": .*\(HTTP 400\)/);
  const id = /version (\S+)/.exec(r.stdout)?.[1];
  assert.ok(id, r.stdout);
  assert.match(r.stderr, new RegExp(`hint: version ${id} is deployed; fix \`triggers\\.crons\` in .*isola\\.toml and run \`isola triggers deploy\``));
  assert.deepEqual(await schedules("b"), [], "a refused list changes nothing");
});

test("triggers deploy: only the schedules, per environment; no [triggers] is an error", { skip }, async () => {
  const { app, isola } = project(
    "t",
    `name = "t"\nmain = "src/index.ts"\n[triggers]\ncrons = ["0 0 * * *"]\n[env.staging.triggers]\ncrons = ["*/10 * * * *"]\n[env.bare]\n`,
  );
  // The workers exist once deployed (without their schedules applied yet: triggers deploy does that).
  for (const e of [[], ["--env", "staging"], ["--env", "bare"]]) assert.equal((await isola(["versions", "upload", ...e])).code, 0);
  const before = await client.versions("t");
  const r = await isola(["triggers", "deploy"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /Applied the schedules of t\nSchedules: 0 0 \* \* \*\n$/);
  assert.deepEqual(await schedules("t"), ["0 0 * * *"]);
  assert.deepEqual(await client.versions("t"), before, "triggers deploy uploaded a version");
  const s = await isola(["triggers", "deploy", "--env", "staging", "--json"]);
  assert.equal(s.code, 0, s.stderr);
  assert.deepEqual(JSON.parse(s.stdout), { worker: "t-staging", crons: ["*/10 * * * *"] });
  assert.deepEqual(await schedules("t-staging"), ["*/10 * * * *"]);
  // [env.bare] inherits the top-level triggers (wrangler's inheritable key).
  assert.equal((await isola(["triggers", "deploy", "--env", "bare"])).code, 0);
  assert.deepEqual(await schedules("t-bare"), ["0 0 * * *"]);
  write(app, "isola.toml", `name = "t"\nmain = "src/index.ts"\n`);
  const none = await isola(["triggers", "deploy"]);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /has no \[triggers\] table/);
  assert.equal((await isola(["triggers"])).code, 2);
});

test("deploy --dry-run: metadata.json has services, kv_namespaces and triggers; contacts nothing", { skip }, async () => {
  const { app, isola } = project(
    "d",
    `name = "d"\nmain = "src/index.ts"\n[triggers]\ncrons = ["*/5 * * * *"]\n[[services]]\nbinding = "S"\nservice = "s"\nentrypoint = "E"\n[[kv_namespaces]]\nbinding = "KV"\nid = "ns1"\n`,
  );
  // A listener that counts connections stands where the API would be.
  let connections = 0;
  const trap = createServer((s) => {
    connections++;
    s.destroy();
  });
  await new Promise<void>((r) => trap.listen(0, "127.0.0.1", () => r()));
  try {
    const port = (trap.address() as { port: number }).port;
    const r = await runCli(["deploy", "--dry-run", "--outdir", "out"], { cwd: app, env: { ...env, ISOLA_API_URL: `http://127.0.0.1:${port}` } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /Schedules \(not applied\): \*\/5 \* \* \* \*/);
  } finally {
    trap.close();
  }
  assert.equal(connections, 0);
  assert.deepEqual(JSON.parse(readFileSync(join(app, "out", "metadata.json"), "utf8")), {
    main_module: "index.js",
    vars: {},
    limits: {},
    services: [{ binding: "S", service: "s", entrypoint: "E" }],
    kv_namespaces: [{ binding: "KV", id: "ns1" }],
    triggers: { crons: ["*/5 * * * *"] },
  });
  assert.ok(existsSync(join(app, "out", "index.js")));
  // --json: the same, as one document.
  const j = await isola(["deploy", "--dry-run", "--outdir", "out2", "--json"]);
  const doc = JSON.parse(j.stdout) as { dry_run: boolean; modules: string[]; metadata: Record<string, unknown> };
  assert.equal(doc.dry_run, true);
  assert.deepEqual(doc.modules, ["index.js"]);
  assert.deepEqual(doc.metadata["kv_namespaces"], [{ binding: "KV", id: "ns1" }]);
});

test("progress: none off a terminal; on a terminal, bundling and uploading show on stderr", { skip: skip || noScript }, async () => {
  const { app, isola } = project("p", `name = "p"\nmain = "src/index.ts"\n`);
  const quiet = await isola(["deploy"]);
  assert.equal(quiet.code, 0, quiet.stderr);
  assert.equal(quiet.stderr, "");
  assert.doesNotMatch(quiet.stdout, /Bundling|Uploading|\r/);
  const dry = await isola(["deploy", "--dry-run"]);
  assert.equal(dry.stderr, "");
  const tty = await runCliInTty(["deploy"], { cwd: app, env });
  assert.equal(tty.code, 0, tty.output);
  assert.match(tty.output, /Bundling src\/index\.ts…/);
  assert.match(tty.output, /Uploading p \(1 module\(s\), [\d.]+ KiB\)…/);
  assert.match(tty.output, /Uploaded p: version \S+/);
});

test("secret put: reads stdin when piped; prompts with hidden input on a terminal; env sees the value", { skip: skip || noScript }, async () => {
  const { app, isola } = project(
    "s",
    `name = "s"\nmain = "src/index.ts"\nroutes = ["secret.test/*"]\n`,
    `export default { fetch: (_r: Request, env: { TOKEN?: string }) => new Response(env.TOKEN ?? "none") };\n`,
  );
  assert.equal((await isola(["deploy"])).code, 0);
  const piped = await isola(["secret", "put", "TOKEN"], "from-pipe\n");
  assert.equal(piped.code, 0, piped.stderr);
  assert.doesNotMatch(piped.stderr + piped.stdout, /Value for/);
  assert.deepEqual((await client.secrets("s")).map((x) => x.key), ["TOKEN"]);
  const tty = await runCliInTty(["secret", "put", "TOKEN"], {
    cwd: app,
    env,
    converse: async ({ waitFor, type }) => {
      await waitFor(/Value for TOKEN: /);
      type("typed-s3cret\r");
    },
  });
  assert.equal(tty.code, 0, tty.output);
  assert.doesNotMatch(tty.output, /typed-s3cret/, "the value was echoed");
  assert.match(tty.output, /Secret TOKEN set on s/);
  // The value typed (not the piped one, not with the \r) is what the worker sees.
  let seen = await serves("secret.test", "typed-s3cret");
  if (!seen) {
    assert.equal((await isola(["deploy"])).code, 0);
    seen = await serves("secret.test", "typed-s3cret");
  }
  assert.ok(seen, `env.TOKEN is not the typed value: ${(await get(cluster!.edgeHttp, "/", "secret.test"))?.body}`);
});

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
