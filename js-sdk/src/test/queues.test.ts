// `isola queues create|list|info|delete|consumer|send` against a real isola-control on
// loopback (ISOLA_CONTROL_BIN); what the CLI did is read back from the server's REST API.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { Client, type QueueInfo } from "../api.js";
import { bindingName, messageOf } from "../queues.js";
import { startControl, skipWithoutControl as skip, type Control } from "./cluster.js";
import { cleanup, runCli, runCliInTty, scriptBinary, tempDir, write } from "./helpers.js";

const noScript = scriptBinary() ? false : "no `script` (util-linux) to run the CLI on a pseudo-terminal";

let dir = "";
let control: Control | undefined;
let env: NodeJS.ProcessEnv = {};
let app = "";
let client: Client;

const isola = (args: string[], input?: string | Uint8Array): ReturnType<typeof runCli> =>
  runCli(args, { cwd: app, env, ...(input !== undefined ? { input } : {}) });

async function ok(args: string[], input?: string | Uint8Array): Promise<string> {
  const r = await isola(args, input);
  assert.equal(r.code, 0, `${args.join(" ")}\n${r.stderr}`);
  return r.stdout;
}

/** Runs a failing command; checks its exit status and that stderr matches each pattern. */
async function fails(args: string[], code: number, ...res: RegExp[]): Promise<string> {
  const r = await isola(args);
  assert.equal(r.code, code, `${args.join(" ")}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  for (const re of res) assert.match(r.stderr, re, args.join(" "));
  return r.stderr;
}

const info = (name: string): Promise<QueueInfo> => client.queue(name);

before(async () => {
  if (skip) return;
  dir = tempDir();
  control = await startControl(dir);
  env = { ...process.env, XDG_CONFIG_HOME: join(dir, "home"), ISOLA_API_URL: control.api, ISOLA_API_TOKEN: control.token };
  client = new Client({ api: control.api, token: control.token });
  // A worker to consume the queues: uploaded (the control plane alone stores it).
  app = join(dir, "app");
  write(app, "isola.toml", `name = "consumer"\nmain = "src/index.ts"\n`);
  write(app, "src/index.ts", `export default { fetch: () => new Response("hi"), async queue(b: { ackAll(): void }) { b.ackAll(); } };\n`);
  const r = await runCli(["versions", "upload"], { cwd: app, env });
  assert.equal(r.code, 0, r.stderr);
});

after(async () => {
  await control?.proc.stop();
  if (dir) cleanup(dir);
});

test("queues create prints the config entries; list and info show it; a taken or bad name says what to do", { skip }, async () => {
  const created = await ok(["queues", "create", "jobs"]);
  assert.match(created, /^Created queue jobs\n/);
  assert.ok(created.endsWith(`[[queues.producers]]\nbinding = "JOBS"\nqueue = "jobs"\n\n[[queues.consumers]]\nqueue = "jobs"\n`), created);
  const q = await info("jobs");
  assert.equal(q.consumer, null);
  assert.equal(q.backlog, 0);

  const json = JSON.parse(await ok(["queues", "create", "jobs-dlq", "--json"])) as QueueInfo;
  assert.equal(json.name, "jobs-dlq");
  assert.equal(json.backlog, 0);

  const listed = JSON.parse(await ok(["queues", "list", "--json"])) as QueueInfo[];
  assert.deepEqual(listed.map((x) => x.name).sort(), ["jobs", "jobs-dlq"]);
  const table = await ok(["queues", "list"]);
  assert.match(table, /^NAME +CONSUMER +BACKLOG +DELAYED +IN FLIGHT +CREATED\n/);
  assert.match(table, /\njobs +- +0 +0 +0 +\d{4}-/);

  const shown = await ok(["queues", "info", "jobs"]);
  assert.match(shown, /^Queue jobs\nCreated: +\d{4}-/);
  assert.match(shown, /\nConsumer: +none \(messages wait in the backlog\)\nBacklog: +0\nDelayed: +0\nIn flight: +0\nDelivered: +0\nRetried: +0\nDead-lettered: +0\nDropped: +0\n$/);
  assert.deepEqual(JSON.parse(await ok(["queues", "info", "jobs", "--json"])), await info("jobs"));

  await fails(["queues", "create", "jobs"], 1, /\(HTTP 409\)/, /hint: a queue named jobs exists; `isola queues info jobs` shows it, or pick another name/);
  await fails(["queues", "create", "Bad Name"], 1, /invalid_request: invalid queue name "Bad Name": use 1 to 63 characters of a-z, 0-9, '-' and '_' \(HTTP 400\)/);
  await fails(["queues", "info", "nope"], 1, /not_found: .*"nope".*\(HTTP 404\)/, /hint: `isola queues list` shows the account's queues; `isola queues create nope` makes this one/);
  const notWorker = await fails(["queues", "info", "nope"], 1);
  assert.doesNotMatch(notWorker, /worker name/, "the hint speaks of queues, not workers");
  await fails(["queues", "create"], 2, /usage: isola queues create NAME/);
  await fails(["queues", "frobnicate"], 2, /unknown command isola queues frobnicate/);
  await fails(["queues", "list", "--bogus"], 2, /Unknown option '--bogus'[\s\S]*isola queues list --help/);
});

test("queues consumer add/remove: settings read back from the server; missing worker, queue or dead-letter queue say the fix", { skip }, async () => {
  await ok(["queues", "create", "orders"]);
  await ok(["queues", "create", "orders-dlq"]);

  // Defaults from the server.
  const plain = await ok(["queues", "consumer", "add", "orders", "consumer"]);
  assert.equal(plain, "consumer consumes queue orders: batch size 10, batch timeout 5 s, retries 3, no dead-letter queue, retry delay 0 s\n");
  assert.deepEqual((await info("orders")).consumer, {
    worker: "consumer",
    max_batch_size: 10,
    max_batch_timeout: 5,
    max_retries: 3,
    dead_letter_queue: null,
    retry_delay: 0,
  });

  // Every flag.
  const all = await ok([
    "queues", "consumer", "add", "orders", "consumer",
    "--batch-size", "50", "--batch-timeout", "2", "--message-retries", "7", "--dead-letter-queue", "orders-dlq", "--retry-delay", "30",
  ]);
  assert.match(all, /batch size 50, batch timeout 2 s, retries 7, dead-letter queue orders-dlq, retry delay 30 s/);
  assert.deepEqual((await info("orders")).consumer, {
    worker: "consumer",
    max_batch_size: 50,
    max_batch_timeout: 2,
    max_retries: 7,
    dead_letter_queue: "orders-dlq",
    retry_delay: 30,
  });
  assert.match(await ok(["queues", "info", "orders"]), /\nConsumer: +consumer \(batch size 50, .*dead-letter queue orders-dlq/);
  // wrangler's --retry-delay-secs works too.
  await ok(["queues", "consumer", "add", "orders", "consumer", "--retry-delay-secs", "5", "--dead-letter-queue", "orders-dlq"]);
  const last = (await info("orders")).consumer;
  assert.equal(last?.retry_delay, 5);
  assert.equal(last?.max_batch_size, 10, "unset flags take the defaults again");

  // The DLQ in use cannot be deleted; the hint names the queue that uses it.
  await fails(["queues", "delete", "orders-dlq", "-y"], 1, /\(HTTP 409\)/, /hint: give orders another dead-letter queue or none \(`isola queues consumer add orders WORKER` without --dead-letter-queue\), or delete orders; then delete orders-dlq/);

  // Mistakes: the server's refusals with a hint, and flags checked before any request.
  await fails(["queues", "consumer", "add", "orders", "no-such-worker"], 1, /\(HTTP 404\)/, /hint: deploy the worker no-such-worker first/);
  await fails(["queues", "consumer", "add", "no-such-queue", "consumer"], 1, /\(HTTP 404\)/, /hint: `isola queues list` shows the account's queues; `isola queues create no-such-queue` makes this one/);
  await fails(["queues", "consumer", "add", "orders", "consumer", "--dead-letter-queue", "missing-dlq"], 1, /invalid_request: .*missing-dlq.*\(HTTP 400\)/, /hint: create it first: `isola queues create missing-dlq`/);
  await fails(["queues", "consumer", "add", "orders", "consumer", "--dead-letter-queue", "orders"], 2, /a queue cannot be its own dead-letter queue/);
  await fails(["queues", "consumer", "add", "orders", "consumer", "--batch-size", "101"], 2, /--batch-size 101: expected a whole number from 1 to 100/);
  await fails(["queues", "consumer", "add", "orders", "consumer", "--batch-timeout", "soon"], 2, /--batch-timeout soon: expected a whole number of seconds from 0 to 60/);
  await fails(["queues", "consumer", "add", "orders"], 2, /usage: isola queues consumer add QUEUE WORKER/);
  assert.deepEqual((await info("orders")).consumer, last, "a refused change changed nothing");

  // Once orders' consumer has no dead-letter queue, orders-dlq can go.
  await ok(["queues", "consumer", "add", "orders", "consumer"]);
  assert.equal(await ok(["queues", "delete", "orders-dlq", "-y"]), "Deleted queue orders-dlq\n");
  assert.ok(!(await client.queues()).some((q) => q.name === "orders-dlq"));
  await fails(["queues", "delete", "orders-dlq", "-y"], 1, /\(HTTP 404\)/, /isola queues create orders-dlq/);

  // remove: only the consumer it names.
  await fails(["queues", "consumer", "remove", "orders", "someone-else"], 1, /someone-else is not the consumer of queue orders: consumer is; run `isola queues consumer remove orders consumer`/);
  assert.match(await ok(["queues", "consumer", "remove", "orders", "consumer"]), /^Removed consumer as the consumer of queue orders; its messages wait/);
  assert.equal((await info("orders")).consumer, null);
  await fails(["queues", "consumer", "remove", "orders", "consumer"], 1, /queue orders has no consumer; nothing to remove/);
  await fails(["queues", "consumer", "remove", "no-such-queue", "consumer"], 1, /\(HTTP 404\)/, /isola queues create no-such-queue/);

});

test("queues send: json, text, bytes and stdin are stored; info shows the backlog and the delayed ones", { skip }, async () => {
  await ok(["queues", "create", "inbox"]);
  const sent = await ok(["queues", "send", "inbox", '{"task":"resize","id":7}']);
  assert.match(sent, /^Sent a json message \(24 bytes\) to queue inbox: id [0-9a-f]{32}\n$/);
  assert.match(await ok(["queues", "send", "inbox", "hello there", "--content-type", "text"]), /Sent a text message \(11 bytes\)/);
  const bytes = randomBytes(1000);
  assert.match(await ok(["queues", "send", "inbox", bytes.toString("base64"), "--content-type", "bytes"]), /Sent a bytes message \(1000 bytes\)/);
  assert.match(await ok(["queues", "send", "inbox", "-", "--content-type", "bytes"], bytes), /Sent a bytes message \(1000 bytes\)/);
  assert.match(await ok(["queues", "send", "inbox", "-"], `["from", "stdin"]\n`), /Sent a json message/);
  const delayed = await ok(["queues", "send", "inbox", "42", "--delay", "3600"]);
  assert.match(delayed, /delivered no sooner than 3600 s from now/);
  const ids = JSON.parse(await ok(["queues", "send", "inbox", '"json string"', "--json"])) as { ids: string[] };
  assert.equal(ids.ids.length, 1);

  // No consumer: they all wait; the delayed one is counted apart.
  const q = await info("inbox");
  assert.equal(q.backlog, 6, JSON.stringify(q));
  assert.equal(q.delayed, 1, JSON.stringify(q));
  assert.match(await ok(["queues", "info", "inbox"]), /\nBacklog: +6\nDelayed: +1\nIn flight: +0\n/);
  assert.match(await ok(["queues", "list"]), /\ninbox +- +6 +1 +0 /);

  await fails(["queues", "send", "inbox", "not json"], 2, /the body is not JSON .*; quote a string as JSON .* or pass --content-type text/);
  await fails(["queues", "send", "inbox", "!!", "--content-type", "bytes"], 2, /BODY is base64/);
  await fails(["queues", "send", "inbox", "x", "--content-type", "v8"], 2, /--content-type v8: use json, text or bytes/);
  await fails(["queues", "send", "inbox", "1", "--delay", "43201"], 2, /--delay 43201: expected a whole number of seconds from 0 to 43200/);
  const big = await isola(["queues", "send", "inbox", "-", "--content-type", "text"], "x".repeat(130 * 1024));
  assert.equal(big.code, 2, big.stderr);
  assert.match(big.stderr, /the body is 133120 bytes; a message is at most 131072 bytes/);
  await fails(["queues", "send", "no-such-queue", "1"], 1, /\(HTTP 404\)/, /`isola queues create no-such-queue` makes this one/);
  await fails(["queues", "send", "inbox"], 2, /usage: isola queues send QUEUE BODY/);
  assert.equal((await info("inbox")).backlog, 6, "refused sends stored nothing");

  // delete takes the messages with it.
  assert.equal(await ok(["queues", "delete", "inbox"]), "Deleted queue inbox\n", "off a terminal it does not ask");
  assert.ok(!(await client.queues()).some((x) => x.name === "inbox"));
});

test("queues --help: every command has its page with examples", { skip }, async () => {
  const pages: [string[], RegExp][] = [
    [["queues", "--help"], /isola queues consumer add QUEUE WORKER/],
    [["queues", "create", "--help"], /\[\[queues\.producers\]\] and \[\[queues\.consumers\]\] entries/],
    [["queues", "list", "--help"], /--json/],
    [["queues", "info", "--help"], /dead-lettered and dropped/],
    [["queues", "delete", "--help"], /every message in it/],
    [["queues", "consumer", "add", "--help"], /--message-retries N/],
    [["queues", "consumer", "remove", "--help"], /wait in the backlog/],
    [["queues", "send", "--help"], /--content-type bytes/],
  ];
  for (const [args, re] of pages) {
    const out = await ok(args);
    assert.match(out, re, args.join(" "));
    assert.match(out, /Examples:\n  isola queues /, args.join(" "));
  }
  assert.match(await ok(["--help"]), /queues create NAME/);
  await fails(["queues"], 2, /isola queues needs a command/);
});

test("queues delete asks on a terminal; no keeps the queue", { skip: skip || noScript }, async () => {
  await ok(["queues", "create", "keep-me"]);
  const no = await runCliInTty(["queues", "delete", "keep-me"], {
    cwd: app,
    env,
    converse: async ({ waitFor, type }) => {
      await waitFor(/\[y\/N\] /);
      type("n\r");
    },
  });
  assert.equal(no.code, 0, no.output);
  assert.match(no.output, /Delete queue keep-me and every message in it\?/);
  assert.match(no.output, /Not deleted\./);
  assert.equal((await info("keep-me")).name, "keep-me");
});

test("queues helpers: message bodies by content type, binding names", () => {
  assert.deepEqual(messageOf('{"a":1}', "json", false), { body: { a: 1 }, content_type: "json" });
  assert.deepEqual(messageOf("hi", "text", false), { body: "hi", content_type: "text" });
  assert.deepEqual(messageOf(Buffer.from([0, 255]), "bytes", true), { body: "AP8=", content_type: "bytes" });
  assert.deepEqual(messageOf("AP8=", "bytes", false), { body: "AP8=", content_type: "bytes" });
  assert.throws(() => messageOf("AP8", "bytes", false), /BODY is base64/);
  assert.equal(bindingName("jobs"), "JOBS");
  assert.equal(bindingName("jobs-dlq"), "JOBS_DLQ");
  assert.equal(bindingName("9lives"), "_9LIVES");
});
