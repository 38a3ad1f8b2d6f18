// `isola queues`: queues, their consumer and sending from the command line (wrangler's command
// names and flags), and what `isola deploy` does with the config's `queues.consumers`.
import { parseArgs, type ParseArgsConfig } from "node:util";
import { ApiError, Client, type ConsumerRequest, type ConsumerSettings, type Json, type OutsideMessage, type QueueInfo } from "./api.js";
import type { Config, QueueConsumer } from "./config.js";
import { UsageError } from "./errors.js";

type Values = Record<string, string | boolean | string[] | undefined>;

export interface QueuesDeps {
  client(): Client;
  out(s: string): void;
  readStdin(): Promise<Buffer>;
  /** Asks a yes/no question on the terminal; undefined when stdin is not a terminal. */
  confirm(question: string): Promise<boolean | undefined>;
}

/** The server's limit on one message's body (Cloudflare's). */
export const MAX_MESSAGE_BYTES = 128 * 1024;
/** The longest delay the server takes: 12 hours. */
export const MAX_DELAY_SECONDS = 12 * 60 * 60;

const CONSUMER_FLAGS = "[--batch-size N] [--batch-timeout S] [--message-retries N] [--dead-letter-queue Q] [--retry-delay S]";

export const QUEUES_HELP = `isola queues — queues, their consumer, and sending messages

Usage:
  isola queues create NAME [--json]
  isola queues list [--json]
  isola queues info NAME [--json]
  isola queues delete NAME [-y]
  isola queues consumer add QUEUE WORKER ${CONSUMER_FLAGS}
  isola queues consumer remove QUEUE WORKER
  isola queues send QUEUE BODY [--content-type json|text|bytes] [--delay S] [--json]

A queue belongs to the account; a worker sends to it through a [[queues.producers]] binding
(env.BINDING.send(...)) and one worker consumes it (its queue handler), set with
\`isola queues consumer add\` or [[queues.consumers]] in isola.toml (applied by \`isola deploy\`).
Run any of them with --help for details and examples.

Examples:
  isola queues create jobs
  isola queues consumer add jobs my-worker --batch-size 50 --dead-letter-queue jobs-dlq
  isola queues send jobs '{"task":"resize","id":7}'
  isola queues info jobs`;

const HELPS: Record<string, string> = {
  create: `isola queues create NAME [--json]

Creates a queue named NAME (1 to 63 characters of a-z, 0-9, - and _; unique in the account)
and prints the [[queues.producers]] and [[queues.consumers]] entries to paste into isola.toml.
  --json                the new queue as JSON (name, created_at, consumer, counts)

Examples:
  isola queues create jobs
  isola queues create jobs-dlq`,
  list: `isola queues list [--json]

Lists the account's queues: name, consumer worker, backlog (ready), delayed and in flight.
  --json                a JSON array of the queues with their consumer and every count

Examples:
  isola queues list
  isola queues list --json | jq -r '.[] | select(.backlog > 0) | .name'`,
  info: `isola queues info NAME [--json]

Shows one queue: its consumer and its settings, and its counts: backlog (ready for delivery),
delayed (waiting for their delay), in flight (in a batch a consumer has now), delivered
(acknowledged), retried, dead-lettered and dropped (failed max_retries times with no
dead-letter queue).
  --json                the queue as JSON

Examples:
  isola queues info jobs
  isola queues info jobs --json | jq .backlog`,
  delete: `isola queues delete NAME [-y]

Deletes a queue and every message in it. On a terminal it asks first; -y skips the question.
A queue that is another queue's dead-letter queue cannot be deleted until that consumer
changes. Workers that send to it get an error from send() afterwards.

Examples:
  isola queues delete jobs
  isola queues delete old-jobs -y`,
  "consumer add": `isola queues consumer add QUEUE WORKER ${CONSUMER_FLAGS}

Makes WORKER (a worker of the account, deployed with a queue handler) the consumer of QUEUE,
replacing any other consumer. Unset settings take the defaults.
  --batch-size N        messages per batch, 1 to 100 (default 10)
  --batch-timeout S     seconds to wait for a full batch, 0 to 60 (default 5)
  --message-retries N   deliveries retried before a message is dead-lettered or dropped,
                        0 to 100 (default 3)
  --dead-letter-queue Q where messages go after their retries (an existing queue); without
                        one they are dropped and counted
  --retry-delay S       seconds before a retried message is delivered again (default 0)

Examples:
  isola queues consumer add jobs my-worker
  isola queues consumer add jobs my-worker --batch-size 50 --batch-timeout 2 --message-retries 5 --dead-letter-queue jobs-dlq`,
  "consumer remove": `isola queues consumer remove QUEUE WORKER

Removes WORKER as the consumer of QUEUE; its messages wait in the backlog until another
consumer is added. WORKER must be the queue's consumer (\`isola queues info QUEUE\` shows it).

Examples:
  isola queues consumer remove jobs my-worker`,
  send: `isola queues send QUEUE BODY [--content-type json|text|bytes] [--delay S] [--json]

Sends one message to QUEUE from the command line (as an outside event would), stored durably
when the command returns. BODY - reads it from stdin.
  --content-type json   BODY is JSON, parsed (the default): the handler's message.body is
                        the value
  --content-type text   BODY is a string
  --content-type bytes  BODY is base64 (from stdin: the raw bytes); message.body is an
                        ArrayBuffer
  --delay S             deliver no sooner than S seconds from now (at most 43200, 12 hours)
  --json                the stored message's id as JSON {"ids": [...]}

A body is at most 128 KB.

Examples:
  isola queues send jobs '{"task":"resize","id":7}'
  isola queues send jobs "hello" --content-type text --delay 60
  isola queues send jobs - --content-type bytes < image.png`,
};

function str(v: string | boolean | string[] | undefined): string | undefined {
  return typeof v === "string" ? v : undefined;
}

function parse(page: string, args: string[], options: NonNullable<ParseArgsConfig["options"]>): { values: Values; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({
      args,
      options: {
        help: { type: "boolean", short: "h" },
        config: { type: "string", short: "c" },
        cwd: { type: "string" },
        env: { type: "string", short: "e" },
        json: { type: "boolean" },
        yes: { type: "boolean", short: "y" },
        ...options,
      },
      allowPositionals: true,
      strict: true,
    });
    return { values: values as Values, positionals };
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\nRun \`isola queues ${page} --help\` for usage.`);
  }
}

/** A whole number flag within [min, max]. */
function whole(flag: string, v: string | undefined, min: number, max: number, unit = ""): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`${flag} ${v}: expected a whole number${unit} from ${min} to ${max}`);
  }
  return n;
}

/** Adds what to do to a 404 about the queue (the generic hint speaks of workers). */
async function onQueue<T>(queue: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    if (e instanceof ApiError && e.status === 404 && !e.hint && /queue/.test(e.message)) {
      e.hint = `\`isola queues list\` shows the account's queues; \`isola queues create ${queue}\` makes this one`;
    }
    throw e;
  }
}

/** `batch size 10, batch timeout 5 s, retries 3, dead-letter queue q, retry delay 0 s`. */
export function describeConsumer(c: ConsumerSettings): string {
  return (
    `batch size ${c.max_batch_size}, batch timeout ${c.max_batch_timeout} s, retries ${c.max_retries}, ` +
    `${c.dead_letter_queue ? `dead-letter queue ${c.dead_letter_queue}` : "no dead-letter queue"}, retry delay ${c.retry_delay} s`
  );
}

async function confirmed(values: Values, deps: QueuesDeps, question: string): Promise<boolean> {
  if (values["yes"]) return true;
  // Off a terminal (scripts, CI) there is nobody to ask.
  return (await deps.confirm(question)) ?? true;
}

function consumerHints(e: unknown, queue: string, worker: string, dlq: string | undefined): void {
  if (!(e instanceof ApiError) || e.hint) return;
  if (e.status === 404 && /worker/.test(e.message)) {
    e.hint = `deploy the worker ${worker} first (\`isola deploy\` in its project), or check the name (\`isola whoami\` lists the workers)`;
  } else if (e.status === 404) {
    e.hint = `create the queue first: \`isola queues create ${queue}\``;
  } else if (e.status === 400 && dlq !== undefined && /dead_letter_queue|dead-letter/.test(e.message)) {
    e.hint = dlq === queue ? "pick another queue as --dead-letter-queue" : `create it first: \`isola queues create ${dlq}\``;
  }
}

async function consumerCmd(sub: string | undefined, rest: string[], deps: QueuesDeps): Promise<void> {
  if (sub === "add") {
    const { values, positionals } = parse("consumer add", rest, {
      "batch-size": { type: "string" },
      "batch-timeout": { type: "string" },
      "message-retries": { type: "string" },
      "dead-letter-queue": { type: "string" },
      "retry-delay": { type: "string" },
      // wrangler's name for it
      "retry-delay-secs": { type: "string" },
    });
    const [queue, worker] = positionals;
    if (queue === undefined || worker === undefined || positionals.length > 2) {
      throw new UsageError(`usage: isola queues consumer add QUEUE WORKER ${CONSUMER_FLAGS}`);
    }
    if (str(values["retry-delay"]) !== undefined && str(values["retry-delay-secs"]) !== undefined) {
      throw new UsageError("pass --retry-delay or --retry-delay-secs, not both");
    }
    const size = whole("--batch-size", str(values["batch-size"]), 1, 100);
    const timeout = whole("--batch-timeout", str(values["batch-timeout"]), 0, 60, " of seconds");
    const retries = whole("--message-retries", str(values["message-retries"]), 0, 100);
    const delay = whole("--retry-delay", str(values["retry-delay"]) ?? str(values["retry-delay-secs"]), 0, MAX_DELAY_SECONDS, " of seconds");
    const dlq = str(values["dead-letter-queue"]);
    if (dlq === "") throw new UsageError("--dead-letter-queue is empty; name an existing queue (`isola queues list`)");
    if (dlq === queue) throw new UsageError(`--dead-letter-queue ${dlq}: a queue cannot be its own dead-letter queue; pick another queue`);
    const request: ConsumerRequest = {
      worker,
      ...(size !== undefined ? { max_batch_size: size } : {}),
      ...(timeout !== undefined ? { max_batch_timeout: timeout } : {}),
      ...(retries !== undefined ? { max_retries: retries } : {}),
      ...(dlq !== undefined ? { dead_letter_queue: dlq } : {}),
      ...(delay !== undefined ? { retry_delay: delay } : {}),
    };
    const client = deps.client();
    const before = await onQueue(queue, () => client.queue(queue));
    let settings: ConsumerSettings;
    try {
      settings = await client.putConsumer(queue, request);
    } catch (e) {
      consumerHints(e, queue, worker, dlq);
      throw e;
    }
    if (values["json"]) return deps.out(JSON.stringify({ queue, ...settings }, null, 2));
    const replaced = before.consumer && before.consumer.worker !== worker ? ` (it replaces ${before.consumer.worker})` : "";
    deps.out(`${worker} consumes queue ${queue}${replaced}: ${describeConsumer(settings)}`);
    return;
  }
  if (sub === "remove") {
    const { positionals } = parse("consumer remove", rest, {});
    const [queue, worker] = positionals;
    if (queue === undefined || worker === undefined || positionals.length > 2) throw new UsageError("usage: isola queues consumer remove QUEUE WORKER");
    const client = deps.client();
    const info = await onQueue(queue, () => client.queue(queue));
    if (!info.consumer) {
      throw new ApiError(0, "not_found", `queue ${queue} has no consumer; nothing to remove (\`isola queues consumer add ${queue} WORKER\` sets one)`);
    }
    if (info.consumer.worker !== worker) {
      throw new ApiError(
        0,
        "not_found",
        `${worker} is not the consumer of queue ${queue}: ${info.consumer.worker} is; run \`isola queues consumer remove ${queue} ${info.consumer.worker}\` to remove that one`,
      );
    }
    await onQueue(queue, () => client.deleteConsumer(queue));
    deps.out(`Removed ${worker} as the consumer of queue ${queue}; its messages wait until another consumer is added`);
    return;
  }
  throw new UsageError(`usage: isola queues consumer add QUEUE WORKER ${CONSUMER_FLAGS} | isola queues consumer remove QUEUE WORKER`);
}

/** The message `send` stores: BODY read as its content type says. */
export function messageOf(body: Buffer | string, contentType: string, fromStdin: boolean): OutsideMessage {
  if (contentType === "json") {
    const text = typeof body === "string" ? body : body.toString("utf8");
    let value: Json;
    try {
      value = JSON.parse(text) as Json;
    } catch (e) {
      throw new UsageError(
        `the body is not JSON (${(e as Error).message}); quote a string as JSON ('"hello"'), or pass --content-type text to send it as text`,
      );
    }
    return { body: value, content_type: "json" };
  }
  if (contentType === "text") return { body: typeof body === "string" ? body : body.toString("utf8"), content_type: "text" };
  if (contentType === "bytes") {
    if (fromStdin) return { body: Buffer.from(body).toString("base64"), content_type: "bytes" };
    const text = (typeof body === "string" ? body : body.toString("utf8")).trim();
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
      throw new UsageError("with --content-type bytes, BODY is base64 (e.g. $(base64 -w0 file)); or pass - and pipe the raw bytes in");
    }
    return { body: text, content_type: "bytes" };
  }
  throw new UsageError(`--content-type ${contentType}: use json, text or bytes`);
}

/** The size of the body the server stores. */
function bodyBytes(m: OutsideMessage): number {
  if (m.content_type === "bytes") return Buffer.from(m.body as string, "base64").length;
  if (m.content_type === "text") return Buffer.byteLength(m.body as string);
  return Buffer.byteLength(JSON.stringify(m.body));
}

async function sendCmd(rest: string[], deps: QueuesDeps): Promise<void> {
  const { values, positionals } = parse("send", rest, {
    "content-type": { type: "string" },
    delay: { type: "string" },
  });
  const [queue, body] = positionals;
  if (queue === undefined || body === undefined || positionals.length > 2) {
    throw new UsageError(
      `usage: isola queues send QUEUE BODY [--content-type json|text|bytes] [--delay S]${positionals.length > 2 ? " (quote a body with spaces)" : ""}`,
    );
  }
  const contentType = str(values["content-type"]) ?? "json";
  const delay = whole("--delay", str(values["delay"]), 0, MAX_DELAY_SECONDS, " of seconds");
  const fromStdin = body === "-";
  const message = messageOf(fromStdin ? await deps.readStdin() : body, contentType, fromStdin);
  const size = bodyBytes(message);
  if (size > MAX_MESSAGE_BYTES) throw new UsageError(`the body is ${size} bytes; a message is at most ${MAX_MESSAGE_BYTES} bytes (128 KB)`);
  if (delay !== undefined) message.delay_seconds = delay;
  const sent = await onQueue(queue, () => deps.client().sendMessage(queue, message));
  if (values["json"]) return deps.out(JSON.stringify(sent, null, 2));
  deps.out(`Sent a ${contentType} message (${size} bytes) to queue ${queue}: id ${sent.ids[0] ?? "?"}${delay ? `, delivered no sooner than ${delay} s from now` : ""}`);
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n");
}

function when(v: Json): string {
  if (typeof v === "number") return new Date(v * (v < 1e12 ? 1000 : 1)).toISOString();
  return String(v ?? "");
}

function infoLines(q: QueueInfo): string[] {
  return [
    `Queue ${q.name}`,
    `Created:        ${when(q.created_at)}`,
    `Consumer:       ${q.consumer ? `${q.consumer.worker} (${describeConsumer(q.consumer)})` : "none (messages wait in the backlog)"}`,
    `Backlog:        ${q.backlog}`,
    `Delayed:        ${q.delayed}`,
    `In flight:      ${q.in_flight}`,
    `Delivered:      ${q.delivered}`,
    `Retried:        ${q.retried}`,
    `Dead-lettered:  ${q.dead_lettered}`,
    `Dropped:        ${q.dropped}`,
  ];
}

/** `isola queues ...` (args after `queues`). */
export async function cmdQueues(args: string[], deps: QueuesDeps): Promise<void> {
  const [sub, ...rest] = args;
  const wantsHelp = args.includes("--help") || args.includes("-h");
  if (wantsHelp || sub === undefined || sub === "help") {
    const page = sub === "consumer" ? HELPS[`consumer ${rest[0] ?? ""}`] : sub ? HELPS[sub] : undefined;
    deps.out(page ?? QUEUES_HELP);
    if (!wantsHelp && sub !== "help") throw new UsageError("isola queues needs a command: create, list, info, delete, consumer or send");
    return;
  }
  if (sub === "create") {
    const { values, positionals } = parse("create", rest, {});
    const name = positionals[0];
    if (name === undefined || positionals.length > 1) throw new UsageError("usage: isola queues create NAME [--json]");
    let q: QueueInfo;
    try {
      q = await deps.client().createQueue(name);
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) e.hint = `a queue named ${name} exists; \`isola queues info ${name}\` shows it, or pick another name`;
      throw e;
    }
    if (values["json"]) return deps.out(JSON.stringify(q, null, 2));
    deps.out(`Created queue ${q.name}`);
    deps.out(`To send to it from a worker, and to consume it, add to isola.toml (or wrangler.toml):\n`);
    deps.out(`[[queues.producers]]\nbinding = ${JSON.stringify(bindingName(q.name))}\nqueue = ${JSON.stringify(q.name)}\n`);
    deps.out(`[[queues.consumers]]\nqueue = ${JSON.stringify(q.name)}`);
    return;
  }
  if (sub === "list") {
    const { values, positionals } = parse("list", rest, {});
    if (positionals.length) throw new UsageError("usage: isola queues list [--json]");
    const list = await deps.client().queues();
    if (values["json"]) return deps.out(JSON.stringify(list, null, 2));
    if (list.length === 0) return deps.out("No queues; create one with `isola queues create NAME`");
    deps.out(
      table([
        ["NAME", "CONSUMER", "BACKLOG", "DELAYED", "IN FLIGHT", "CREATED"],
        ...list.map((q) => [q.name, q.consumer?.worker ?? "-", String(q.backlog), String(q.delayed), String(q.in_flight), when(q.created_at)]),
      ]),
    );
    return;
  }
  if (sub === "info") {
    const { values, positionals } = parse("info", rest, {});
    const name = positionals[0];
    if (name === undefined || positionals.length > 1) throw new UsageError("usage: isola queues info NAME [--json]");
    const q = await onQueue(name, () => deps.client().queue(name));
    if (values["json"]) return deps.out(JSON.stringify(q, null, 2));
    deps.out(infoLines(q).join("\n"));
    return;
  }
  if (sub === "delete") {
    const { values, positionals } = parse("delete", rest, {});
    const name = positionals[0];
    if (name === undefined || positionals.length > 1) throw new UsageError("usage: isola queues delete NAME [-y]");
    if (!(await confirmed(values, deps, `Delete queue ${name} and every message in it?`))) return deps.out("Not deleted.");
    try {
      await onQueue(name, () => deps.client().deleteQueue(name));
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) {
        const user = /dead-letter queue of "([^"]+)"/.exec(e.message)?.[1];
        e.hint = user
          ? `give ${user} another dead-letter queue or none (\`isola queues consumer add ${user} WORKER\` without --dead-letter-queue), or delete ${user}; then delete ${name}`
          : `change the consumer that uses ${name} as its dead-letter queue first`;
      }
      throw e;
    }
    deps.out(`Deleted queue ${name}`);
    return;
  }
  if (sub === "consumer") return consumerCmd(rest[0], rest.slice(1), deps);
  if (sub === "send") return sendCmd(rest, deps);
  throw new UsageError(`unknown command isola queues ${sub}; the commands are create, list, info, delete, consumer add|remove and send (\`isola queues --help\`)`);
}

/** A JavaScript identifier for a queue's producer binding: `jobs-dlq` → `JOBS_DLQ`. */
export function bindingName(queue: string): string {
  let b = queue.toUpperCase().replace(/[^A-Z0-9_$]+/g, "_").replace(/^_+|_+$/g, "");
  if (!b) b = "QUEUE";
  if (/^[0-9]/.test(b)) b = `_${b}`;
  return b;
}

/** What deploy did with one `[[queues.consumers]]` entry. */
export interface AppliedConsumer extends ConsumerSettings {
  queue: string;
  /** The queue did not exist and deploy created it. */
  created: boolean;
}

/** Keeps only the settings the entry sets (the server fills in the defaults). */
function requestOf(c: QueueConsumer, worker: string): ConsumerRequest {
  return {
    worker,
    ...(c.max_batch_size !== undefined ? { max_batch_size: c.max_batch_size } : {}),
    ...(c.max_batch_timeout !== undefined ? { max_batch_timeout: c.max_batch_timeout } : {}),
    ...(c.max_retries !== undefined ? { max_retries: c.max_retries } : {}),
    ...(c.dead_letter_queue !== undefined ? { dead_letter_queue: c.dead_letter_queue } : {}),
    ...(c.retry_delay !== undefined ? { retry_delay: c.retry_delay } : {}),
  };
}

/**
 * Deploy's step for `queues`: creates each consumer's queue (and dead-letter queue) that does
 * not exist, then makes `worker` the consumer with the entry's settings. Warns about producers
 * whose queue does not exist (sends to it fail at run time). `context` starts each hint.
 */
export async function applyQueues(
  config: Config,
  worker: string,
  client: Client,
  log: { say(s: string): void; warn(s: string): void },
  context: string,
): Promise<AppliedConsumer[]> {
  const { producers, consumers } = config.queues;
  if (producers.length === 0 && consumers.length === 0) return [];
  const existing = new Set((await client.queues()).map((q) => q.name));
  const created = new Set<string>();
  const ensure = async (name: string, why: string): Promise<void> => {
    if (existing.has(name)) return;
    try {
      await client.createQueue(name);
    } catch (e) {
      // Made meanwhile by someone else: fine.
      if (!(e instanceof ApiError && e.status === 409)) {
        if (e instanceof ApiError) e.hint = `${context}deploy creates the queues its consumers need; fix the queue name ${JSON.stringify(name)} in ${config.file}`;
        throw e;
      }
    }
    existing.add(name);
    created.add(name);
    log.say(`Created queue ${name} (${why}; it did not exist)`);
  };
  const applied: AppliedConsumer[] = [];
  for (const [i, c] of consumers.entries()) {
    await ensure(c.queue, `queues.consumers[${i}] consumes it`);
    if (c.dead_letter_queue !== undefined && c.dead_letter_queue !== c.queue) {
      await ensure(c.dead_letter_queue, `the dead-letter queue of ${c.queue}`);
    }
    let settings: ConsumerSettings;
    try {
      settings = await client.putConsumer(c.queue, requestOf(c, worker));
    } catch (e) {
      if (e instanceof ApiError) {
        e.hint = `${context}fix \`queues.consumers[${i}]\` (queue ${c.queue}) in ${config.file} and run \`isola deploy\` again`;
      }
      throw e;
    }
    applied.push({ queue: c.queue, created: created.has(c.queue), ...settings });
  }
  for (const [i, p] of producers.entries()) {
    if (!existing.has(p.queue)) {
      log.warn(
        `queues.producers[${i}]: env.${p.binding} sends to queue ${p.queue}, which does not exist; its send() calls fail until you run \`isola queues create ${p.queue}\``,
      );
    }
  }
  return applied;
}

/** One line of deploy's output per consumer. */
export function consumerLine(c: AppliedConsumer): string {
  return `Consumer of queue ${c.queue}: ${describeConsumer(c)}`;
}

