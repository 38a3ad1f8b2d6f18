// `isola kv`: KV namespaces, keys and bulk writes (wrangler's command names and flags).
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { ApiError, Client, type Json, type KvBulkPair, type KvKey } from "./api.js";
import { ConfigError, type Config } from "./config.js";
import { UsageError } from "./errors.js";
import { progress } from "./progress.js";

/** At most this many pairs (or keys) per bulk request: the server's limit. */
export const MAX_BULK = 10_000;
/** A bulk write's body stays under the server's 100 MiB limit for it. */
const MAX_BULK_PUT_BYTES = 90 << 20;
/** A bulk delete's body stays under the server's default 2 MiB request limit. */
const MAX_BULK_DELETE_BYTES = 1 << 20;

type Values = Record<string, string | boolean | string[] | undefined>;

export interface KvDeps {
  /** Loads the project's config (--config, --cwd, --env in `values`), printing its warnings. */
  projectConfig(values: Values): Config;
  client(): Client;
  out(s: string): void;
  /** Raw bytes to stdout. */
  write(bytes: Uint8Array): void;
  readStdin(): Promise<Buffer>;
  /** Asks a yes/no question on the terminal; undefined when stdin is not a terminal. */
  confirm(question: string): Promise<boolean | undefined>;
}

const NAMESPACE_FLAGS = "(--binding NAME | --namespace-id ID)";

export const KV_HELP = `isola kv — KV namespaces and their keys

Usage:
  isola kv namespace create TITLE [--binding NAME] [--json]
  isola kv namespace list [--json]
  isola kv namespace delete ${NAMESPACE_FLAGS} [-y]
  isola kv key put KEY [VALUE] [--path FILE] [--ttl S] [--expiration T] [--metadata JSON] ${NAMESPACE_FLAGS}
  isola kv key get KEY [--text] ${NAMESPACE_FLAGS}
  isola kv key list [--prefix P] ${NAMESPACE_FLAGS}
  isola kv key delete KEY ${NAMESPACE_FLAGS}
  isola kv bulk put FILE ${NAMESPACE_FLAGS}
  isola kv bulk delete FILE ${NAMESPACE_FLAGS} [-y]

--binding NAME picks the namespace by its binding in the config's kv_namespaces (with
--env NAME, that environment's); --namespace-id ID names it directly. Run any of them
with --help for details and examples.

Examples:
  isola kv namespace create SESSIONS
  isola kv key put greeting "hello" --binding SESSIONS --ttl 3600
  isola kv key get greeting --binding SESSIONS --text
  isola kv key list --prefix user: --binding SESSIONS
  isola kv bulk put seed.json --binding SESSIONS`;

const SELECT_HELP = `  --binding NAME        the namespace bound as NAME in kv_namespaces (isola.toml or
                        wrangler.toml; --env NAME for an environment's bindings)
  --namespace-id ID     the namespace's id (\`isola kv namespace list\` shows them)
  --config FILE, --cwd DIR, --env NAME   where the config is, as for other commands`;

const HELPS: Record<string, string> = {
  "namespace create": `isola kv namespace create TITLE [--binding NAME] [--json]

Creates a KV namespace titled TITLE (unique in the account) and prints its id and the
[[kv_namespaces]] entry to paste into isola.toml. The binding in that entry is TITLE
(made a JavaScript identifier) unless --binding NAME says otherwise.
  --json                the new namespace as JSON {id, title, created_at}

Examples:
  isola kv namespace create SESSIONS
  isola kv namespace create "my app cache" --binding CACHE`,
  "namespace list": `isola kv namespace list [--json]

Lists the account's KV namespaces: id, title, creation time.
  --json                a JSON array of {id, title, created_at}

Examples:
  isola kv namespace list
  isola kv namespace list --json | jq -r '.[] | select(.title == "SESSIONS") | .id'`,
  "namespace delete": `isola kv namespace delete ${NAMESPACE_FLAGS} [-y]

Deletes a KV namespace and every value in it. On a terminal it asks first; -y skips the
question. Workers whose deployed versions bind it keep running, and their reads of it fail.
${SELECT_HELP}

Examples:
  isola kv namespace delete --namespace-id 0f3c9a...
  isola kv namespace delete --binding SESSIONS -y`,
  "key put": `isola kv key put KEY [VALUE] [--path FILE] [--ttl S] [--expiration T] [--metadata JSON] ${NAMESPACE_FLAGS}

Writes one value: VALUE as UTF-8 text, or the bytes of --path FILE (one of them).
  --ttl S               expire S seconds from now (at least 60)
  --expiration T        expire at T, Unix seconds (at least 60 s ahead)
  --metadata JSON       a JSON value stored with the key (at most 1024 bytes)
${SELECT_HELP}

Examples:
  isola kv key put greeting "hello" --binding SESSIONS
  isola kv key put logo.png --path ./logo.png --namespace-id 0f3c9a...
  isola kv key put session:42 '{"user":7}' --ttl 3600 --metadata '{"v":1}' --binding SESSIONS`,
  "key get": `isola kv key get KEY [--text] ${NAMESPACE_FLAGS}

Writes the value's bytes to stdout as stored; with --text, decoded as UTF-8 and followed by
a newline. A missing key is an error (exit status 1).
${SELECT_HELP}

Examples:
  isola kv key get greeting --binding SESSIONS --text
  isola kv key get logo.png --namespace-id 0f3c9a... > logo.png`,
  "key list": `isola kv key list [--prefix P] ${NAMESPACE_FLAGS}

Prints the keys as a JSON array of {name, expiration?, metadata?} in UTF-8 byte order,
every page of them (it follows the listing's cursors to the end).
  --prefix P            only keys starting with P
${SELECT_HELP}

Examples:
  isola kv key list --binding SESSIONS
  isola kv key list --prefix user: --binding SESSIONS | jq -r '.[].name'`,
  "key delete": `isola kv key delete KEY ${NAMESPACE_FLAGS}

Deletes one key (a key that is not there is not an error).
${SELECT_HELP}

Examples:
  isola kv key delete greeting --binding SESSIONS`,
  "bulk put": `isola kv bulk put FILE ${NAMESPACE_FLAGS}

Writes many values from FILE (- reads stdin): a JSON array in Cloudflare's bulk format,
  [{"key": "k", "value": "text", "base64": false, "expiration": 1767225600,
    "expiration_ttl": 3600, "metadata": {...}}, ...]
where only key and value are required, and value is base64 when "base64" is true. It is
sent in batches of ${MAX_BULK.toLocaleString("en")} pairs; each batch is written whole or not at all.
${SELECT_HELP}

Examples:
  isola kv bulk put seed.json --binding SESSIONS
  jq '[.[] | {key: .id, value: (. | tostring)}]' users.json | isola kv bulk put - --binding USERS`,
  "bulk delete": `isola kv bulk delete FILE ${NAMESPACE_FLAGS} [-y]

Deletes the keys listed in FILE (- reads stdin): a JSON array of strings, or of objects with
a "key" (a bulk put file works as is). Sent in batches of ${MAX_BULK.toLocaleString("en")} keys. On a terminal it
asks first; -y skips the question.
${SELECT_HELP}

Examples:
  isola kv bulk delete old-keys.json --binding SESSIONS -y
  isola kv key list --prefix tmp: --binding SESSIONS | isola kv bulk delete - --binding SESSIONS -y`,
};

type Options = NonNullable<ParseArgsConfig["options"]>;
const COMMON: Options = {
  help: { type: "boolean", short: "h" },
  config: { type: "string", short: "c" },
  cwd: { type: "string" },
  env: { type: "string", short: "e" },
  json: { type: "boolean" },
  yes: { type: "boolean", short: "y" },
  force: { type: "boolean", short: "f" },
  binding: { type: "string" },
  "namespace-id": { type: "string" },
};

function parse(usage: string, args: string[], options: Options): { values: Values; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args, options: { ...COMMON, ...options }, allowPositionals: true, strict: true });
    return { values: values as Values, positionals };
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\nRun \`isola kv ${usage} --help\` for usage.`);
  }
}

function str(v: string | boolean | string[] | undefined): string | undefined {
  return typeof v === "string" ? v : undefined;
}

/** A binding name from a title: a JavaScript identifier. */
export function bindingName(title: string): string {
  let b = title.trim().replace(/[^A-Za-z0-9_$]+/g, "_").replace(/^_+|_+$/g, "");
  if (!b) b = "KV";
  if (/^[0-9]/.test(b)) b = `_${b}`;
  return b;
}

/** The namespace id from --namespace-id, or --binding through the config's kv_namespaces. */
function namespaceOf(usage: string, values: Values, deps: KvDeps): { id: string; label: string } {
  const id = str(values["namespace-id"]);
  const binding = str(values["binding"]);
  if (id !== undefined && binding !== undefined) throw new UsageError("pass --binding NAME or --namespace-id ID, not both");
  if (id !== undefined) {
    if (!id) throw new UsageError("--namespace-id is empty; `isola kv namespace list` shows the ids");
    return { id, label: id };
  }
  if (binding === undefined) {
    throw new UsageError(
      `say which namespace: --binding NAME (a binding in the config's kv_namespaces) or --namespace-id ID (\`isola kv namespace list\` shows the ids)\nusage: isola kv ${usage}`,
    );
  }
  const config = deps.projectConfig(values);
  const found = config.kv_namespaces.find((k) => k.binding === binding);
  if (!found) {
    const have = config.kv_namespaces.map((k) => k.binding);
    throw new ConfigError(
      `${config.file}${config.env ? ` (env ${config.env})` : ""} has no kv_namespaces entry with binding = "${binding}"` +
        (have.length ? ` (it has: ${have.join(", ")})` : "") +
        `; add [[kv_namespaces]] with binding = "${binding}" and the namespace's id (\`isola kv namespace list\`), or pass --namespace-id ID`,
    );
  }
  return { id: found.id, label: `${found.id} (binding ${binding})` };
}

/** Adds what to do to a 404 about the namespace (the generic hint speaks of workers). */
async function onNamespace<T>(id: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    if (e instanceof ApiError && e.status === 404 && !e.hint) {
      e.hint = `no KV namespace ${id} in this account; \`isola kv namespace list\` shows the ids (fix --namespace-id, or the id in kv_namespaces)`;
    }
    throw e;
  }
}

function wholeNumber(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n)) throw new UsageError(`${flag} ${v}: expected a whole number of seconds`);
  return n;
}

async function readInput(file: string, values: Values, deps: KvDeps): Promise<{ bytes: Buffer; name: string }> {
  if (file === "-") return { bytes: await deps.readStdin(), name: "stdin" };
  const path = resolve(str(values["cwd"]) ?? ".", file);
  try {
    return { bytes: readFileSync(path), name: file };
  } catch (e) {
    throw new UsageError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
  }
}

/** Thrown for a bulk file that is not in the expected shape; names the file and the entry. */
export class KvFileError extends Error {
  override name = "KvFileError";
}

const PAIR_FIELDS = ["key", "value", "base64", "expiration", "expiration_ttl", "metadata"];

/** Parses and checks a bulk put file (Cloudflare's format). */
export function parseBulkPut(text: string, name: string): KvBulkPair[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new KvFileError(`${name} is not JSON (${(e as Error).message}); expected an array of {"key": ..., "value": ...}`);
  }
  if (!Array.isArray(doc)) throw new KvFileError(`${name}: expected a JSON array of {"key": ..., "value": ...}, found ${kind(doc)}`);
  return doc.map((p: unknown, i) => {
    const at = `${name}: [${i}]`;
    if (typeof p !== "object" || p === null || Array.isArray(p)) throw new KvFileError(`${at}: expected an object {"key": ..., "value": ...}, found ${kind(p)}`);
    const o = p as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      if (!PAIR_FIELDS.includes(k)) throw new KvFileError(`${at}: unknown field "${k}"; the fields are ${PAIR_FIELDS.join(", ")}`);
    }
    if (typeof o["key"] !== "string") throw new KvFileError(`${at}: "key" must be a string`);
    if (typeof o["value"] !== "string") {
      throw new KvFileError(`${at} (key ${JSON.stringify(o["key"])}): "value" must be a string (text, or base64 with "base64": true); found ${kind(o["value"])}`);
    }
    if (o["base64"] !== undefined && typeof o["base64"] !== "boolean") throw new KvFileError(`${at}: "base64" must be true or false`);
    for (const f of ["expiration", "expiration_ttl"]) {
      const v = o[f];
      if (v !== undefined && (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0)) throw new KvFileError(`${at}: "${f}" must be a whole number of seconds`);
    }
    return o as unknown as KvBulkPair;
  });
}

/** Parses a bulk delete file: an array of keys, or of objects with a "key". */
export function parseBulkDelete(text: string, name: string): string[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new KvFileError(`${name} is not JSON (${(e as Error).message}); expected an array of keys`);
  }
  if (!Array.isArray(doc)) throw new KvFileError(`${name}: expected a JSON array of keys (or of {"key": ...}), found ${kind(doc)}`);
  return doc.map((k: unknown, i) => {
    if (typeof k === "string") return k;
    if (typeof k === "object" && k !== null && typeof (k as { key?: unknown }).key === "string") return (k as { key: string }).key;
    throw new KvFileError(`${name}: [${i}]: expected a key (a string) or an object with a "key" string, found ${kind(k)}`);
  });
}

function kind(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

/** Splits `items` into batches of at most `max` items and about `maxBytes` of JSON each. */
export function batches<T>(items: T[], max: number, maxBytes: number): T[][] {
  const out: T[][] = [];
  let cur: T[] = [];
  let bytes = 2;
  for (const item of items) {
    const size = Buffer.byteLength(JSON.stringify(item)) + 1;
    if (cur.length > 0 && (cur.length >= max || bytes + size > maxBytes)) {
      out.push(cur);
      cur = [];
      bytes = 2;
    }
    cur.push(item);
    bytes += size;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

/** Runs the batches in order; a failure says how far it got. */
async function sendBatches<T>(
  what: string,
  all: T[][],
  send: (batch: T[]) => Promise<{ count: number }>,
): Promise<number> {
  const total = all.reduce((n, b) => n + b.length, 0);
  const p = progress(`${what} 0 of ${total}…`);
  let done = 0;
  try {
    for (const [i, batch] of all.entries()) {
      try {
        done += (await send(batch)).count;
      } catch (e) {
        if (e instanceof ApiError && all.length > 1) {
          e.hint =
            `batch ${i + 1} of ${all.length} failed; batches 1 to ${i} (${done} keys) were done, the rest not. ` +
            `Each batch is all or nothing; fix the cause and run the command again (it is safe to repeat).` +
            (e.hint ? ` ${e.hint}` : "");
        }
        throw e;
      }
      p.update(`${what} ${done} of ${total}…`);
    }
  } finally {
    p.done();
  }
  return done;
}

async function namespaceCmd(sub: string | undefined, rest: string[], deps: KvDeps): Promise<void> {
  if (sub === "create") {
    const { values, positionals } = parse("namespace create", rest, {});
    const title = positionals[0];
    if (title === undefined || positionals.length > 1) throw new UsageError(`usage: isola kv namespace create TITLE [--binding NAME] [--json]${positionals.length > 1 ? " (quote a title with spaces)" : ""}`);
    let ns;
    try {
      ns = await deps.client().createKvNamespace(title);
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) e.hint = `a namespace titled "${title}" exists; \`isola kv namespace list\` shows its id, or pick another title`;
      throw e;
    }
    if (values["json"]) return deps.out(JSON.stringify(ns, null, 2));
    const binding = str(values["binding"]) ?? bindingName(title);
    deps.out(`Created KV namespace "${ns.title}" with id ${ns.id}`);
    deps.out(`Add it to the kv_namespaces in isola.toml (or wrangler.toml):\n`);
    deps.out(`[[kv_namespaces]]\nbinding = ${JSON.stringify(binding)}\nid = ${JSON.stringify(ns.id)}`);
    return;
  }
  if (sub === "list") {
    const { values, positionals } = parse("namespace list", rest, {});
    if (positionals.length) throw new UsageError("usage: isola kv namespace list [--json]");
    const list = await deps.client().kvNamespaces();
    if (values["json"]) return deps.out(JSON.stringify(list, null, 2));
    if (list.length === 0) return deps.out("No KV namespaces; create one with `isola kv namespace create TITLE`");
    deps.out(table([["ID", "TITLE", "CREATED"], ...list.map((n) => [n.id, n.title, when(n.created_at)])]));
    return;
  }
  if (sub === "delete") {
    const { values, positionals } = parse("namespace delete", rest, {});
    if (positionals.length) throw new UsageError(`isola kv namespace delete takes no positional arguments; pass ${NAMESPACE_FLAGS}`);
    const ns = namespaceOf("namespace delete --binding NAME | --namespace-id ID", values, deps);
    if (!(await confirmed(values, deps, `Delete KV namespace ${ns.label} and every value in it?`))) return deps.out("Not deleted.");
    await onNamespace(ns.id, () => deps.client().deleteKvNamespace(ns.id));
    deps.out(`Deleted KV namespace ${ns.label}`);
    if (str(values["binding"])) deps.out(`Remove its [[kv_namespaces]] entry (binding = "${str(values["binding"])}") from the config before the next deploy.`);
    return;
  }
  throw new UsageError("usage: isola kv namespace create TITLE | list [--json] | delete (--binding NAME | --namespace-id ID)");
}

async function confirmed(values: Values, deps: KvDeps, question: string): Promise<boolean> {
  if (values["yes"] || values["force"]) return true;
  // Off a terminal (scripts, CI) there is nobody to ask.
  return (await deps.confirm(question)) ?? true;
}

async function keyCmd(sub: string | undefined, rest: string[], deps: KvDeps): Promise<void> {
  if (sub === "put") {
    const usage = `key put KEY [VALUE] [--path FILE] [--ttl S] [--expiration T] [--metadata JSON] ${NAMESPACE_FLAGS}`;
    const { values, positionals } = parse("key put", rest, {
      path: { type: "string" },
      ttl: { type: "string" },
      expiration: { type: "string" },
      metadata: { type: "string" },
    });
    const [key, text] = positionals;
    if (key === undefined || positionals.length > 2) throw new UsageError(`usage: isola kv ${usage}`);
    const path = str(values["path"]);
    if (text !== undefined && path !== undefined) throw new UsageError("pass the VALUE or --path FILE, not both");
    if (text === undefined && path === undefined) throw new UsageError(`no value for ${key}: pass it after the key, or --path FILE for a file's bytes`);
    const metadata = str(values["metadata"]);
    if (metadata !== undefined) {
      try {
        JSON.parse(metadata);
      } catch (e) {
        throw new UsageError(`--metadata is not JSON (${(e as Error).message}); e.g. --metadata '{"version":1}'`);
      }
    }
    const ttl = wholeNumber("--ttl", str(values["ttl"]));
    const expiration = wholeNumber("--expiration", str(values["expiration"]));
    const ns = namespaceOf(usage, values, deps);
    const bytes = path !== undefined ? (await readInput(path, values, deps)).bytes : Buffer.from(text!, "utf8");
    await onNamespace(ns.id, () =>
      deps.client().kvPut(ns.id, key, bytes, {
        ...(ttl !== undefined ? { expirationTtl: ttl } : {}),
        ...(expiration !== undefined ? { expiration } : {}),
        ...(metadata !== undefined ? { metadata } : {}),
      }),
    );
    deps.out(`Wrote ${JSON.stringify(key)} (${bytes.length} bytes) to KV namespace ${ns.label}`);
    return;
  }
  if (sub === "get") {
    const usage = `key get KEY [--text] ${NAMESPACE_FLAGS}`;
    const { values, positionals } = parse("key get", rest, { text: { type: "boolean" } });
    const key = positionals[0];
    if (key === undefined || positionals.length > 1) throw new UsageError(`usage: isola kv ${usage}`);
    const ns = namespaceOf(usage, values, deps);
    const got = await onNamespace(ns.id, () => deps.client().kvGet(ns.id, key));
    if (!got) {
      throw new ApiError(0, "not_found", `no key ${JSON.stringify(key)} in KV namespace ${ns.label}; \`isola kv key list\` shows its keys`);
    }
    if (values["text"]) deps.out(Buffer.from(got.value).toString("utf8"));
    else deps.write(got.value);
    return;
  }
  if (sub === "list") {
    const usage = `key list [--prefix P] ${NAMESPACE_FLAGS}`;
    const { values, positionals } = parse("key list", rest, { prefix: { type: "string" } });
    if (positionals.length) throw new UsageError(`usage: isola kv ${usage}`);
    const ns = namespaceOf(usage, values, deps);
    const prefix = str(values["prefix"]);
    const keys: KvKey[] = [];
    let cursor: string | undefined;
    for (;;) {
      const page = await onNamespace(ns.id, () =>
        deps.client().kvKeys(ns.id, { ...(prefix !== undefined ? { prefix } : {}), ...(cursor !== undefined ? { cursor } : {}) }),
      );
      keys.push(...page.keys);
      if (page.list_complete || !page.cursor) break;
      cursor = page.cursor;
    }
    deps.out(JSON.stringify(keys, null, 2));
    return;
  }
  if (sub === "delete") {
    const usage = `key delete KEY ${NAMESPACE_FLAGS}`;
    const { values, positionals } = parse("key delete", rest, {});
    const key = positionals[0];
    if (key === undefined || positionals.length > 1) throw new UsageError(`usage: isola kv ${usage}`);
    const ns = namespaceOf(usage, values, deps);
    await onNamespace(ns.id, () => deps.client().kvDelete(ns.id, key));
    deps.out(`Deleted ${JSON.stringify(key)} from KV namespace ${ns.label}`);
    return;
  }
  throw new UsageError("usage: isola kv key put|get|list|delete ...; run `isola kv key put --help` and the like for details");
}

async function bulkCmd(sub: string | undefined, rest: string[], deps: KvDeps): Promise<void> {
  if (sub === "put") {
    const usage = `bulk put FILE ${NAMESPACE_FLAGS}`;
    const { values, positionals } = parse("bulk put", rest, {});
    const file = positionals[0];
    if (file === undefined || positionals.length > 1) throw new UsageError(`usage: isola kv ${usage} (FILE: - reads stdin)`);
    const ns = namespaceOf(usage, values, deps);
    const input = await readInput(file, values, deps);
    const pairs = parseBulkPut(input.bytes.toString("utf8"), input.name);
    if (pairs.length === 0) throw new KvFileError(`${input.name} is an empty array; nothing to write`);
    const all = batches(pairs, MAX_BULK, MAX_BULK_PUT_BYTES);
    const client = deps.client();
    const count = await onNamespace(ns.id, () => sendBatches("Writing", all, (b) => client.kvBulkPut(ns.id, b)));
    deps.out(`Wrote ${count} key(s) to KV namespace ${ns.label} in ${all.length} request(s)`);
    return;
  }
  if (sub === "delete") {
    const usage = `bulk delete FILE ${NAMESPACE_FLAGS} [-y]`;
    const { values, positionals } = parse("bulk delete", rest, {});
    const file = positionals[0];
    if (file === undefined || positionals.length > 1) throw new UsageError(`usage: isola kv ${usage} (FILE: - reads stdin)`);
    const ns = namespaceOf(usage, values, deps);
    const input = await readInput(file, values, deps);
    const keys = parseBulkDelete(input.bytes.toString("utf8"), input.name);
    if (keys.length === 0) throw new KvFileError(`${input.name} is an empty array; nothing to delete`);
    if (!(await confirmed(values, deps, `Delete ${keys.length} key(s) from KV namespace ${ns.label}?`))) return deps.out("Not deleted.");
    const all = batches(keys, MAX_BULK, MAX_BULK_DELETE_BYTES);
    const client = deps.client();
    const count = await onNamespace(ns.id, () => sendBatches("Deleting", all, (b) => client.kvBulkDelete(ns.id, b)));
    deps.out(`Deleted ${count} key(s) from KV namespace ${ns.label} in ${all.length} request(s)`);
    return;
  }
  throw new UsageError(`usage: isola kv bulk put FILE ${NAMESPACE_FLAGS} | isola kv bulk delete FILE ${NAMESPACE_FLAGS} [-y]`);
}

/** `isola kv ...` (args after `kv`). */
export async function cmdKv(args: string[], deps: KvDeps): Promise<void> {
  const [group, sub, ...rest] = args;
  const wantsHelp = args.includes("--help") || args.includes("-h");
  if (wantsHelp || group === undefined || group === "help") {
    const help = group && sub ? HELPS[`${group} ${sub}`] : undefined;
    deps.out(help ?? KV_HELP);
    if (!wantsHelp && group !== "help") throw new UsageError("isola kv needs a command: namespace, key or bulk");
    return;
  }
  if (group === "namespace") return namespaceCmd(sub, rest, deps);
  if (group === "key") return keyCmd(sub, rest, deps);
  if (group === "bulk") return bulkCmd(sub, rest, deps);
  throw new UsageError(`unknown command isola kv ${group}; the commands are kv namespace, kv key and kv bulk (\`isola kv --help\`)`);
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n");
}

function when(v: Json): string {
  if (typeof v === "number") return new Date(v * (v < 1e12 ? 1000 : 1)).toISOString();
  return String(v ?? "");
}
