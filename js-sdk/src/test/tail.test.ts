// `isola tail`: the pretty formatter and the filters' query string (unit), and the command end to
// end against a WebSocket server started here.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { parseTailArgs, prettyLines, tailQuery, tailUrl, type TailEvent, type TailLine } from "../tail.js";
import { UsageError } from "../errors.js";
import { startControl, skipWithoutControl } from "./cluster.js";
import { cleanup, Proc, CLI, runCli, runCliInTty, scriptBinary, tempDir, write } from "./helpers.js";
import { startTailStandIn, type TailStandIn } from "./tailserver.js";

// ---- the pretty formatter ----

const T = 1_796_000_000_000;
const time = (ms: number | undefined): string => `<${ms}>`;
const base = { eventTimestamp: T, scriptName: "hello", scriptVersion: { id: "v1" }, logs: [], exceptions: [], cpuTime: 1, wallTime: 2, edge: "e1", truncated: false };
const request = (method: string, url: string, status = 200): TailEvent["event"] => ({ request: { url, method, headers: {} }, response: { status } });
const out = (text: string): TailLine => ({ stream: "out", text });
const err = (text: string): TailLine => ({ stream: "err", text });

const PRETTY: { name: string; event: TailEvent; lines: TailLine[] }[] = [
  { name: "request ok", event: { ...base, outcome: "ok", event: request("GET", "https://x/") }, lines: [out(`GET https://x/ - Ok @ <${T}>`)] },
  { name: "lowercase method", event: { ...base, outcome: "ok", event: request("post", "https://x/a?b=1") }, lines: [out(`POST https://x/a?b=1 - Ok @ <${T}>`)] },
  { name: "canceled", event: { ...base, outcome: "canceled", event: request("GET", "https://x/") }, lines: [out(`GET https://x/ - Canceled @ <${T}>`)] },
  { name: "cpu", event: { ...base, outcome: "exceededCpu", event: request("GET", "https://x/") }, lines: [out(`GET https://x/ - Exceeded CPU Limit @ <${T}>`)] },
  { name: "memory", event: { ...base, outcome: "exceededMemory", event: request("GET", "https://x/") }, lines: [out(`GET https://x/ - Exceeded Memory Limit @ <${T}>`)] },
  { name: "no url", event: { ...base, outcome: "ok", event: { request: { method: "GET" } } }, lines: [out(`[missing request] - Ok @ <${T}>`)] },
  {
    name: "cron uses the scheduled time",
    event: { ...base, outcome: "ok", event: { cron: "*/5 * * * *", scheduledTime: T - 5 } },
    lines: [out(`"*/5 * * * *" @ <${T - 5}> - Ok`)],
  },
  { name: "queue", event: { ...base, outcome: "ok", event: { queue: "q", batchSize: 3 } }, lines: [out(`Queue q (3 messages) - Ok @ <${T}>`)] },
  { name: "queue of one", event: { ...base, outcome: "exception", event: { queue: "jobs", batchSize: 1 } }, lines: [out(`Queue jobs (1 message) - Exception Thrown @ <${T}>`)] },
  { name: "rpc", event: { ...base, outcome: "ok", event: { rpcMethod: "getUser" } }, lines: [out(`default.getUser - Ok @ <${T}>`)] },
  { name: "rpc, named entrypoint", event: { ...base, outcome: "ok", entrypoint: "Api", event: { rpcMethod: "sum" } }, lines: [out(`Api.sum - Ok @ <${T}>`)] },
  { name: "unknown event", event: { ...base, outcome: "ok", event: null }, lines: [out(`Unknown Event - Ok @ <${T}>`)] },
  {
    name: "logs, formatted as console.log does; warn and error on stderr",
    event: {
      ...base,
      outcome: "ok",
      event: request("GET", "https://x/"),
      logs: [
        { level: "log", message: ["hello", { id: 7 }, 3], timestamp: T },
        { level: "info", message: ["100%", "done"], timestamp: T },
        { level: "warn", message: ["careful"], timestamp: T },
        { level: "error", message: ["bad", [1, 2]], timestamp: T },
        { level: "debug", message: "a string, not an array", timestamp: T },
      ],
    },
    lines: [
      out(`GET https://x/ - Ok @ <${T}>`),
      out("  (log) hello { id: 7 } 3"),
      out("  (info) 100% done"),
      err("  (warn) careful"),
      err("  (error) bad [ 1, 2 ]"),
      out("  (debug) a string, not an array"),
    ],
  },
  {
    name: "exception with a V8 stack prints its first line once",
    event: {
      ...base,
      outcome: "exception",
      event: request("GET", "https://x/boom", 500),
      exceptions: [{ name: "Error", message: "boom", stack: "Error: boom\n    at fetch (src/index.ts:3:11)", timestamp: T }],
    },
    lines: [out(`GET https://x/boom - Exception Thrown @ <${T}>`), err("  Error: boom\n    at fetch (src/index.ts:3:11)")],
  },
  {
    name: "exception without a stack, and one whose stack starts otherwise",
    event: {
      ...base,
      outcome: "exception",
      event: { cron: "0 * * * *", scheduledTime: T },
      exceptions: [
        { name: "TypeError", message: "x is undefined", stack: null, timestamp: T },
        { name: "RangeError", message: "too big", stack: "    at f (a.js:1:1)", timestamp: T },
      ],
    },
    lines: [out(`"0 * * * *" @ <${T}> - Exception Thrown`), err("  TypeError: x is undefined"), err("  RangeError: too big\n    at f (a.js:1:1)")],
  },
  {
    name: "truncated logs say so",
    event: { ...base, outcome: "ok", event: request("GET", "https://x/"), truncated: true, logs: [{ level: "log", message: ["x"], timestamp: T }] },
    lines: [out(`GET https://x/ - Ok @ <${T}>`), out("  (log) x"), out("  (logs past 128 KB were left out)")],
  },
  { name: "wall time", event: { ...base, outcome: "exceededWall", event: request("GET", "https://x/") }, lines: [out(`GET https://x/ - Exceeded Wall Time Limit @ <${T}>`)] },
  { name: "an outcome this CLI does not know prints as sent", event: { ...base, outcome: "somethingNew", event: request("GET", "https://x/") }, lines: [out(`GET https://x/ - somethingNew @ <${T}>`)] },
];

for (const c of PRETTY) {
  test(`pretty: ${c.name}`, () => {
    assert.deepEqual(prettyLines(c.event, time), c.lines);
  });
}

test("pretty: times print in local time by default", () => {
  const [line] = prettyLines({ ...base, outcome: "ok", event: request("GET", "https://x/") });
  assert.equal(line?.text, `GET https://x/ - Ok @ ${new Date(T).toLocaleString()}`);
});

// ---- arguments → query string ----

const QUERIES: { args: string[]; query: string; worker?: string; format?: string }[] = [
  { args: [], query: "" },
  { args: ["my-worker"], query: "", worker: "my-worker" },
  { args: ["--format", "json"], query: "", format: "json" },
  { args: ["--status", "error"], query: "status=error" },
  { args: ["--status", "ok", "--status", "canceled"], query: "status=ok&status=canceled" },
  { args: ["--method", "get", "--method", "POST"], query: "method=GET&method=POST" },
  { args: ["--header", "user-agent:curl/8.5.0"], query: "header=user-agent%3Acurl%2F8.5.0" },
  { args: ["--ip", "10.0.0.1", "--ip", "::1"], query: "client_ip=10.0.0.1&client_ip=%3A%3A1" },
  { args: ["--search", "payment failed & more"], query: "search=payment+failed+%26+more" },
  { args: ["--sampling-rate", "0.5"], query: "sampling_rate=0.5" },
  { args: ["--sampling-rate", "1"], query: "sampling_rate=1" },
  { args: ["--version-id", "0a1b2c"], query: "version=0a1b2c" },
  {
    args: ["w", "--version-id", "v", "--search", "x", "--sampling-rate", ".25", "--ip", "1.2.3.4", "--header", "a:b", "--method", "PUT", "--status", "ok", "--format", "pretty"],
    query: "status=ok&method=PUT&header=a%3Ab&client_ip=1.2.3.4&search=x&sampling_rate=0.25&version=v",
    worker: "w",
    format: "pretty",
  },
];

for (const c of QUERIES) {
  test(`query: isola tail ${c.args.join(" ")}`, () => {
    const parsed = parseTailArgs(c.args);
    assert.equal(tailQuery(parsed.filters), c.query);
    assert.equal(parsed.worker, c.worker);
    assert.equal(parsed.format, c.format);
  });
}

const BAD: { args: string[]; message: RegExp }[] = [
  { args: ["--sampling-rate", "0"], message: /--sampling-rate 0: expected a number more than 0 and at most 1/ },
  { args: ["--sampling-rate", "1.5"], message: /--sampling-rate 1\.5/ },
  { args: ["--sampling-rate=-0.1"], message: /--sampling-rate -0\.1/ },
  { args: ["--sampling-rate", "half"], message: /--sampling-rate half/ },
  { args: ["--sampling-rate", ""], message: /--sampling-rate :/ },
  { args: ["--status", "failed"], message: /--status failed: pick ok, error or canceled/ },
  { args: ["--format", "text"], message: /--format text: pick pretty or json/ },
  { args: ["--header", "user-agent"], message: /--header user-agent: expected NAME:VALUE/ },
  { args: ["--method", "GET /"], message: /--method GET \/: expected an HTTP method/ },
  { args: ["a", "b"], message: /one worker name/ },
  { args: ["--nope"], message: /Unknown option '--nope'[\s\S]*isola tail --help/ },
];

for (const c of BAD) {
  test(`query: isola tail ${c.args.join(" ")} is refused`, () => {
    assert.throws(() => parseTailArgs(c.args), (e: unknown) => e instanceof UsageError && c.message.test(e.message));
  });
}

test("tailUrl: ws for http, wss for https, the worker's name escaped", () => {
  const none = parseTailArgs([]).filters;
  assert.equal(tailUrl("http://127.0.0.1:8080", "hello", none), "ws://127.0.0.1:8080/v1/workers/hello/tail");
  assert.equal(tailUrl("https://api.example.com/", "a b", parseTailArgs(["--status", "ok"]).filters), "wss://api.example.com/v1/workers/a%20b/tail?status=ok");
  assert.equal(tailUrl("https://example.com/isola", "w", none), "wss://example.com/isola/v1/workers/w/tail");
});

// ---- end to end ----
//
// The server here stands in for the control plane's tail endpoint, which is built in parallel
// and not there yet: it speaks the endpoint's protocol (the upgrade, the filters, one wrangler
// tail-shaped JSON event per text frame, a close reason when it drops a client). Once the
// endpoint lands, the integrator replaces startTailStandIn() with the real isola-control
// (startControl() in cluster.ts, plus an edge producing the events): everything below talks
// to `server.api` and `server.token` only, through `tail()`.

let server: TailStandIn;
let dir = "";

before(async () => {
  server = await startTailStandIn();
  dir = tempDir();
});

after(async () => {
  await server?.close();
  if (dir) cleanup(dir);
});

/** The CLI's env for the API at `api` with `token` (nothing stored: a fresh config dir). */
function envFor(api: string, token: string): NodeJS.ProcessEnv {
  return { ...process.env, XDG_CONFIG_HOME: join(dir, "home"), ISOLA_API_URL: api, ISOLA_API_TOKEN: token };
}

/** Runs `isola tail ARGS` against the API at `api` until it exits. */
function tail(api: string, token: string, args: string[], cwd = dir): ReturnType<typeof runCli> {
  return runCli(["tail", ...args], { cwd, env: envFor(api, token) });
}

const EVENTS: TailEvent[] = [
  { ...base, outcome: "ok", event: request("GET", "https://hello.example.com/"), logs: [{ level: "log", message: ["hi", { n: 1 }], timestamp: T }] },
  { ...base, outcome: "exception", event: request("POST", "https://hello.example.com/boom", 500), exceptions: [{ name: "Error", message: "boom", stack: "Error: boom\n    at fetch (index.js:2:9)", timestamp: T }] },
  { ...base, outcome: "ok", event: { cron: "*/5 * * * *", scheduledTime: T } },
  { ...base, outcome: "exceededCpu", event: { queue: "jobs", batchSize: 3 } },
];

test("json (piped): the upgrade carries the path, the token and the filters; events print unchanged, one per line; the server's close reason is printed", async () => {
  const frames = EVENTS.map((e) => JSON.stringify(e));
  // A frame spread over lines still prints on one.
  frames.push(JSON.stringify(EVENTS[0], null, 2));
  server.onTail = (conn) => {
    for (const f of frames) conn.send(f);
    conn.close(1008, "tail client too slow: dropped");
  };
  const r = await tail(server.api, server.token, [
    "hello",
    "--status", "error", "--status", "canceled",
    "--method", "post",
    "--header", "x-user:7",
    "--ip", "10.0.0.1",
    "--search", "boom",
    "--sampling-rate", "0.5",
    "--version-id", "v1",
  ]);
  const req = server.requests.at(-1)!;
  assert.equal(req.path, "/v1/workers/hello/tail");
  assert.equal(req.authorization, `Bearer ${server.token}`);
  assert.deepEqual(
    [...req.query],
    [["status", "error"], ["status", "canceled"], ["method", "POST"], ["header", "x-user:7"], ["client_ip", "10.0.0.1"], ["search", "boom"], ["sampling_rate", "0.5"], ["version", "v1"]],
  );
  assert.equal(r.code, 1, r.stderr);
  const lines = r.stdout.trimEnd().split("\n");
  assert.deepEqual(lines, [...frames.slice(0, 4), JSON.stringify(EVENTS[0])]);
  assert.match(r.stderr, /the server closed the tail: tail client too slow: dropped \(code 1008\)/);
});

test("pretty: wrangler's lines; Ctrl-C closes the socket cleanly (close code 1000) and exits 0", async () => {
  const closed = new Promise<number>((res) => {
    server.onTail = (conn) => {
      conn.on("close", (code) => res(code));
      for (const e of EVENTS) conn.send(JSON.stringify(e));
    };
  });
  const app = join(dir, "app");
  write(app, "isola.toml", `name = "hello"\nmain = "src/index.ts"\n[env.staging]\n`);
  const p = new Proc(process.execPath, [CLI, "tail", "--format", "pretty", "--env", "staging"], { cwd: app, env: envFor(server.api, server.token) });
  try {
    const t = (ms: number): string => new Date(ms).toLocaleString();
    // stdout and stderr come on separate pipes: wait for the last line of each.
    await p.waitFor(/Queue jobs \(3 messages\) - Exceeded CPU Limit @ /);
    await p.waitFor(/at fetch \(index\.js:2:9\)/);
    assert.equal(server.requests.at(-1)!.path, "/v1/workers/hello-staging/tail");
    for (const line of [
      `GET https://hello.example.com/ - Ok @ ${t(T)}`,
      "  (log) hi { n: 1 }",
      `POST https://hello.example.com/boom - Exception Thrown @ ${t(T)}`,
      "  Error: boom\n    at fetch (index.js:2:9)",
      `"*/5 * * * *" @ ${t(T)} - Ok`,
      `Queue jobs (3 messages) - Exceeded CPU Limit @ ${t(T)}`,
    ]) {
      assert.ok(p.output.includes(line), `${line}\nnot in:\n${p.output}`);
    }
    assert.match(p.output, /Connected to hello-staging, waiting for events/);
    p.child.kill("SIGINT");
    assert.equal(await closed, 1000);
    await p.waitFor(/Tail closed\./);
    await new Promise<void>((res) => (p.exited !== null ? res() : p.child.once("exit", () => res())));
    assert.equal(p.exited, 0, p.output);
  } finally {
    await p.stop();
  }
});

test("refused upgrades say what failed and the fix: bad token, unknown worker, a control plane without the tail endpoint, a refused filter", async () => {
  server.onTail = (conn) => conn.close(1000, "done");
  const bad = await tail(server.api, "wrong-token", ["hello"]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /unauthorized: cannot open the tail of hello: .*\(HTTP 401\)/);
  assert.match(bad.stderr, /hint: the token was refused; run `isola login/);

  const missing = await tail(server.api, server.token, ["nope"]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /not_found: cannot open the tail of nope: no worker named nope \(HTTP 404\)/);
  assert.match(missing.stderr, /hint: check the worker's name/);

  // What an isola-control from before live tail answers (its fallback for unknown routes).
  const old = await tail(server.api + "/old", server.token, ["hello"]);
  assert.equal(old.code, 1);
  assert.match(old.stderr, /not_found: cannot open the tail of hello: no endpoint GET \/old\/v1\/workers\/hello\/tail \(HTTP 404\)/);
  assert.match(old.stderr, /hint: the control plane at .* has no tail endpoint .*; update isola-control/);

  const refused = await tail(server.api, server.token, ["hello", "--search", "REFUSE"]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /invalid_request: cannot open the tail of hello: search is refused here \(HTTP 400\)/);
  assert.match(refused.stderr, /hint: the server refused a filter/);

  // A normal close by the server: its reason, exit 0.
  const done = await tail(server.api, server.token, ["hello"]);
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stderr, /the server closed the tail: done \(code 1000\)/);
});

test("usage errors exit 2 before connecting; no server says how to point at one; --help has examples", async () => {
  const before = server.requests.length;
  const rate = await tail(server.api, server.token, ["hello", "--sampling-rate", "0"]);
  assert.equal(rate.code, 2);
  assert.match(rate.stderr, /--sampling-rate 0: expected a number more than 0 and at most 1/);
  const noConfig = await tail(server.api, server.token, []);
  assert.equal(noConfig.code, 1);
  assert.match(noConfig.stderr, /no isola\.toml.*or name the worker: `isola tail WORKER`/);
  assert.equal(server.requests.length, before, "nothing reached the server");

  const down = await tail("http://127.0.0.1:9", server.token, ["hello"]);
  assert.equal(down.code, 1);
  assert.match(down.stderr, /unreachable: cannot open the tail at ws:\/\/127\.0\.0\.1:9\/v1\/workers\/hello\/tail \(ECONNREFUSED\); check the API URL/);

  const help = await tail(server.api, server.token, ["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^isola tail — /);
  assert.match(help.stdout, /Examples:\n {2}isola tail\n/);
  assert.match((await runCli(["--help"])).stdout, /tail \[WORKER\]/);
});

test("on a terminal the format defaults to pretty", { skip: scriptBinary() ? false : "no `script` (util-linux) to run the CLI on a pseudo-terminal" }, async () => {
  server.onTail = (conn) => {
    conn.send(JSON.stringify(EVENTS[0]));
    conn.close(1000, "done");
  };
  const r = await runCliInTty(["tail", "hello"], { cwd: dir, env: envFor(server.api, server.token) });
  assert.equal(r.code, 0, r.output);
  assert.ok(r.output.includes(`GET https://hello.example.com/ - Ok @ ${new Date(T).toLocaleString()}`), r.output);
  assert.ok(!r.output.includes('"outcome"'), r.output);
});

test("against the real isola-control, a tail it cannot open says why (no such worker, or no tail endpoint yet)", { skip: skipWithoutControl }, async () => {
  const cdir = tempDir();
  const control = await startControl(cdir);
  try {
    const r = await tail(control.api, control.token, ["no-such-worker"]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /\(HTTP 404\)\nhint: (the control plane at .* has no tail endpoint|check the worker's name)/);
    const bad = await tail(control.api, "wrong-token", ["no-such-worker"]);
    assert.equal(bad.code, 1, bad.stderr);
    assert.match(bad.stderr, /\(HTTP 40[14]\)\nhint: /);
  } finally {
    await control.proc.stop();
    cleanup(cdir);
  }
});
