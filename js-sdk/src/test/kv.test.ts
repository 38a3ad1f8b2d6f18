// `isola kv namespace|key|bulk` against a real isola-control on loopback (ISOLA_CONTROL_BIN);
// no edge is needed for the REST API.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { batches, bindingName, parseBulkDelete, parseBulkPut } from "../kv.js";
import { startControl, skipWithoutControl as skip, type Control } from "./cluster.js";
import { cleanup, runCli, runCliInTty, scriptBinary, tempDir, write } from "./helpers.js";

const noScript = scriptBinary() ? false : "no `script` (util-linux) to run the CLI on a pseudo-terminal";

let dir = "";
let control: Control | undefined;
let env: NodeJS.ProcessEnv = {};
let app = "";

const isola = (args: string[], input?: string | Uint8Array): ReturnType<typeof runCli> =>
  runCli(args, { cwd: app, env, ...(input !== undefined ? { input } : {}) });

/** Creates a namespace through the CLI; returns its id. */
async function createNamespace(title: string): Promise<string> {
  const r = await isola(["kv", "namespace", "create", title, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { id: string }).id;
}

interface Key {
  name: string;
  expiration?: number;
  metadata?: unknown;
}
async function listKeys(args: string[]): Promise<Key[]> {
  const r = await isola(["kv", "key", "list", ...args]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Key[];
}

before(async () => {
  if (skip) return;
  dir = tempDir();
  control = await startControl(dir);
  env = { ...process.env, XDG_CONFIG_HOME: join(dir, "home"), ISOLA_API_URL: control.api, ISOLA_API_TOKEN: control.token };
  app = join(dir, "app");
  write(app, "isola.toml", `name = "kv-app"\nmain = "src/index.ts"\n`);
});

after(async () => {
  await control?.proc.stop();
  if (dir) cleanup(dir);
});

test("kv namespace create prints the id and the [[kv_namespaces]] entry; list; a taken title is a 409 with a hint", { skip }, async () => {
  const r = await isola(["kv", "namespace", "create", "SESSIONS"]);
  assert.equal(r.code, 0, r.stderr);
  const id = /with id (\S+)/.exec(r.stdout)?.[1];
  assert.ok(id, r.stdout);
  assert.ok(r.stdout.endsWith(`[[kv_namespaces]]\nbinding = "SESSIONS"\nid = "${id}"\n`), r.stdout);

  // A title that is not an identifier: the binding in the snippet is one; --binding overrides it.
  const spaced = await isola(["kv", "namespace", "create", "my app-cache"]);
  assert.match(spaced.stdout, /binding = "my_app_cache"/);
  const named = await isola(["kv", "namespace", "create", "other", "--binding", "OTHER_KV"]);
  assert.match(named.stdout, /binding = "OTHER_KV"/);

  const taken = await isola(["kv", "namespace", "create", "SESSIONS"]);
  assert.equal(taken.code, 1);
  assert.match(taken.stderr, /\(HTTP 409\)/);
  assert.match(taken.stderr, /hint: a namespace titled "SESSIONS" exists; `isola kv namespace list` shows its id/);

  const lj = await isola(["kv", "namespace", "list", "--json"]);
  assert.equal(lj.code, 0, lj.stderr);
  const listed = JSON.parse(lj.stdout) as { id: string; title: string }[];
  assert.equal(listed.find((n) => n.title === "SESSIONS")?.id, id);
  assert.ok(listed.some((n) => n.title === "my app-cache"));
  const lt = await isola(["kv", "namespace", "list"]);
  assert.match(lt.stdout, /^ID +TITLE +CREATED\n/);
  assert.match(lt.stdout, new RegExp(`${id} +SESSIONS `));
});

test("kv namespace delete by --namespace-id and by --binding through the config (with --env)", { skip }, async () => {
  const a = await createNamespace("to-delete-a");
  const b = await createNamespace("to-delete-b");
  const del = await isola(["kv", "namespace", "delete", "--namespace-id", a]);
  assert.equal(del.code, 0, del.stderr);
  assert.match(del.stdout, new RegExp(`Deleted KV namespace ${a}`));
  const cfg = join(dir, "del-app");
  write(cfg, "isola.toml", `name = "d"\n[env.prod]\n[[env.prod.kv_namespaces]]\nbinding = "OLD"\nid = "${b}"\n`);
  const viaBinding = await runCli(["kv", "namespace", "delete", "--binding", "OLD", "--env", "prod"], { cwd: cfg, env });
  assert.equal(viaBinding.code, 0, viaBinding.stderr);
  assert.match(viaBinding.stdout, /Deleted KV namespace .* \(binding OLD\)\nRemove its \[\[kv_namespaces\]\] entry/);
  const titles = (JSON.parse((await isola(["kv", "namespace", "list", "--json"])).stdout) as { title: string }[]).map((n) => n.title);
  assert.ok(!titles.includes("to-delete-a") && !titles.includes("to-delete-b"), titles.join(", "));

  // Gone: a 404 whose hint speaks of namespaces, not workers.
  const again = await isola(["kv", "namespace", "delete", "--namespace-id", a]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /not_found: .*\(HTTP 404\)/);
  assert.match(again.stderr, /hint: no KV namespace .* in this account; `isola kv namespace list` shows the ids/);
  assert.doesNotMatch(again.stderr, /worker name/);
});

test("kv key put/get/list/delete: text, a file's bytes, --text, --ttl, --expiration, --metadata, odd keys", { skip }, async () => {
  const id = await createNamespace("keys");
  const ns = ["--namespace-id", id];

  const put = await isola(["kv", "key", "put", "greeting", "héllo", ...ns]);
  assert.equal(put.code, 0, put.stderr);
  assert.match(put.stdout, /Wrote "greeting" \(6 bytes\) to KV namespace/);
  const raw = await isola(["kv", "key", "get", "greeting", ...ns]);
  assert.equal(raw.code, 0, raw.stderr);
  assert.equal(raw.stdout, "héllo", "raw bytes, no newline added");
  const text = await isola(["kv", "key", "get", "greeting", "--text", ...ns]);
  assert.equal(text.stdout, "héllo\n");

  // Binary from --path comes back byte for byte.
  const bytes = randomBytes(70_000);
  writeFileSync(join(app, "blob.bin"), bytes);
  assert.equal((await isola(["kv", "key", "put", "blob", "--path", "blob.bin", ...ns])).code, 0);
  const blob = await isola(["kv", "key", "get", "blob", ...ns]);
  assert.equal(blob.code, 0, blob.stderr);
  assert.ok(blob.stdoutBytes.equals(bytes), `got ${blob.stdoutBytes.length} bytes`);

  // Expiry and metadata show in the listing.
  const now = Math.floor(Date.now() / 1000);
  assert.equal((await isola(["kv", "key", "put", "ttl", "x", "--ttl", "3600", "--metadata", '{"v":1,"tags":["a"]}', ...ns])).code, 0);
  assert.equal((await isola(["kv", "key", "put", "abs", "y", "--expiration", String(now + 7200), ...ns])).code, 0);
  // Keys with slashes, spaces, ? and % survive the URL.
  const odd = "dir/sub dir/q?x=1&y=%20#frag";
  assert.equal((await isola(["kv", "key", "put", odd, "odd", ...ns])).code, 0);
  assert.equal((await isola(["kv", "key", "get", odd, ...ns])).stdout, "odd");

  const keys = await listKeys(ns);
  assert.deepEqual(keys.map((k) => k.name), ["abs", "blob", odd, "greeting", "ttl"]);
  const ttl = keys.find((k) => k.name === "ttl")!;
  assert.deepEqual(ttl.metadata, { v: 1, tags: ["a"] });
  assert.ok(ttl.expiration! >= now + 3600, JSON.stringify(ttl));
  assert.equal(keys.find((k) => k.name === "abs")?.expiration, now + 7200);
  assert.equal("expiration" in keys.find((k) => k.name === "greeting")!, false);
  assert.deepEqual((await listKeys(["--prefix", "g", ...ns])).map((k) => k.name), ["greeting"]);

  const del = await isola(["kv", "key", "delete", "greeting", ...ns]);
  assert.equal(del.code, 0, del.stderr);
  const gone = await isola(["kv", "key", "get", "greeting", ...ns]);
  assert.equal(gone.code, 1);
  assert.equal(gone.stdout, "");
  assert.match(gone.stderr, /no key "greeting" in KV namespace .*; `isola kv key list` shows its keys/);
});

test("kv key: --binding resolves through isola.toml; mistakes say what failed and the fix", { skip }, async () => {
  const id = await createNamespace("bound");
  write(app, "isola.toml", `name = "kv-app"\nmain = "src/index.ts"\n[[kv_namespaces]]\nbinding = "CACHE"\nid = "${id}"\n`);
  const put = await isola(["kv", "key", "put", "k", "v", "--binding", "CACHE"]);
  assert.equal(put.code, 0, put.stderr);
  assert.match(put.stdout, new RegExp(`to KV namespace ${id} \\(binding CACHE\\)`));
  assert.equal((await isola(["kv", "key", "get", "k", "--namespace-id", id])).stdout, "v");

  const cases: [string[], number, RegExp][] = [
    [["kv", "key", "get", "k"], 2, /say which namespace: --binding NAME .* or --namespace-id ID/],
    [["kv", "key", "get", "k", "--binding", "CACHE", "--namespace-id", id], 2, /--binding NAME or --namespace-id ID, not both/],
    [["kv", "key", "get", "k", "--binding", "NOPE"], 1, /isola\.toml has no kv_namespaces entry with binding = "NOPE" \(it has: CACHE\); add \[\[kv_namespaces\]\]/],
    [["kv", "key", "put", "k", "--binding", "CACHE"], 2, /no value for k: pass it after the key, or --path FILE/],
    [["kv", "key", "put", "k", "v", "--path", "f", "--binding", "CACHE"], 2, /the VALUE or --path FILE, not both/],
    [["kv", "key", "put", "k", "v", "--metadata", "{nope", "--binding", "CACHE"], 2, /--metadata is not JSON/],
    [["kv", "key", "put", "k", "v", "--ttl", "soon", "--binding", "CACHE"], 2, /--ttl soon: expected a whole number of seconds/],
    [["kv", "key", "put", "k", "--path", "missing.bin", "--binding", "CACHE"], 2, /cannot read missing\.bin: no such file/],
    // The server's limits come back as its message.
    [["kv", "key", "put", "k", "v", "--ttl", "5", "--binding", "CACHE"], 1, /invalid_request: .*60.*\(HTTP 400\)/],
    [["kv", "key", "get", "k", "--namespace-id", "no-such-namespace"], 1, /hint: no KV namespace no-such-namespace in this account/],
    [["kv", "key", "frobnicate"], 2, /usage: isola kv key put\|get\|list\|delete/],
    [["kv", "nope"], 2, /unknown command isola kv nope/],
    [["kv", "key", "get", "k", "--bogus", "--binding", "CACHE"], 2, /Unknown option '--bogus'[\s\S]*isola kv key get --help/],
  ];
  for (const [args, code, re] of cases) {
    const r = await isola(args);
    assert.equal(r.code, code, `${args.join(" ")}\n${r.stderr}`);
    assert.match(r.stderr, re, args.join(" "));
  }
  const noCreds = await runCli(["kv", "namespace", "list"], { cwd: app, env: { ...env, ISOLA_API_URL: "", ISOLA_API_TOKEN: "" } });
  assert.equal(noCreds.code, 1);
  assert.match(noCreds.stderr, /isola login --api URL/);
});

test("kv bulk put: Cloudflare's format in batches of 10,000; key list follows the cursors; bulk delete", { skip, timeout: 180_000 }, async () => {
  const id = await createNamespace("bulk");
  const ns = ["--namespace-id", id];
  const pairs = Array.from({ length: 10_001 }, (_, i) => ({ key: `k${String(i).padStart(5, "0")}`, value: `v${i}` }));
  write(app, "seed.json", JSON.stringify(pairs));
  const r = await isola(["kv", "bulk", "put", "seed.json", ...ns]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /Wrote 10001 key\(s\) to KV namespace .* in 2 request\(s\)/);
  const keys = await listKeys(ns);
  assert.equal(keys.length, 10_001, "every page (1,000 keys each) was followed");
  assert.deepEqual(keys.map((k) => k.name), pairs.map((p) => p.key));
  assert.equal((await isola(["kv", "key", "get", "k10000", ...ns])).stdout, "v10000");

  // base64, metadata and expiration_ttl, from stdin.
  const bin = Buffer.from([0, 255, 1, 254]);
  const extra = [
    { key: "bin", value: bin.toString("base64"), base64: true, metadata: { kind: "bytes" } },
    { key: "soon", value: "s", expiration_ttl: 600 },
  ];
  const s = await isola(["kv", "bulk", "put", "-", ...ns], JSON.stringify(extra));
  assert.equal(s.code, 0, s.stderr);
  assert.match(s.stdout, /Wrote 2 key\(s\) .* in 1 request\(s\)/);
  assert.ok((await isola(["kv", "key", "get", "bin", ...ns])).stdoutBytes.equals(bin));
  const listed = await listKeys(["--prefix", "bin", ...ns]);
  assert.deepEqual(listed, [{ name: "bin", metadata: { kind: "bytes" } }]);
  assert.ok((await listKeys(["--prefix", "soon", ...ns]))[0]?.expiration);

  // bulk delete: a bulk put file works as is (objects with "key"); so do plain strings.
  const d = await isola(["kv", "bulk", "delete", "seed.json", ...ns]);
  assert.equal(d.code, 0, d.stderr);
  assert.match(d.stdout, /Deleted 10001 key\(s\) .* in 2 request\(s\)/);
  const d2 = await isola(["kv", "bulk", "delete", "-", ...ns], JSON.stringify(["bin"]));
  assert.equal(d2.code, 0, d2.stderr);
  assert.deepEqual((await listKeys(ns)).map((k) => k.name), ["soon"]);
});

test("kv bulk: bad files name the file and the entry; the server's refusal names the pair", { skip }, async () => {
  const id = await createNamespace("bulk-bad");
  const ns = ["--namespace-id", id];
  const bad = async (text: string, re: RegExp, sub = "put", code = 1): Promise<void> => {
    write(app, "bad.json", text);
    const r = await isola(["kv", "bulk", sub, "bad.json", ...ns, "-y"]);
    assert.equal(r.code, code, r.stderr);
    assert.match(r.stderr, re);
  };
  await bad(`{"key": "a"}`, /bad\.json: expected a JSON array of \{"key": \.\.\., "value": \.\.\.\}, found an object/);
  await bad(`[{"key": "a", "value": "x"}, {"key": "b", "val": "y"}]`, /bad\.json: \[1\]: unknown field "val"; the fields are key, value, base64/);
  await bad(`[{"key": "a", "value": 3}]`, /bad\.json: \[0\] \(key "a"\): "value" must be a string/);
  await bad(`[oops`, /bad\.json is not JSON/);
  await bad(`[]`, /bad\.json is an empty array; nothing to write/);
  await bad(`[{"key": "", "value": "x"}]`, /invalid_request: \[0\].*\(HTTP 400\)/);
  await bad(`["a", 7]`, /bad\.json: \[1\]: expected a key \(a string\) or an object with a "key" string, found a number/, "delete");
  assert.deepEqual(await listKeys(ns), [], "nothing was written");
});

test("kv --help: every command has its page with examples", { skip }, async () => {
  const pages: [string[], RegExp][] = [
    [["kv", "--help"], /isola kv namespace create TITLE/],
    [["kv", "namespace", "create", "--help"], /\[\[kv_namespaces\]\] entry to paste/],
    [["kv", "namespace", "list", "--help"], /--json/],
    [["kv", "namespace", "delete", "--help"], /every value in it/],
    [["kv", "key", "put", "--help"], /--ttl S/],
    [["kv", "key", "get", "--help"], /--text/],
    [["kv", "key", "list", "--help"], /follows the listing's cursors/],
    [["kv", "key", "delete", "--help"], /Deletes one key/],
    [["kv", "bulk", "put", "--help"], /batches of 10,000/],
    [["kv", "bulk", "delete", "--help"], /a bulk put file works as is/],
  ];
  for (const [args, re] of pages) {
    const r = await isola(args);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, re, args.join(" "));
    assert.match(r.stdout, /Examples:\n  isola kv /, args.join(" "));
  }
  const top = await isola(["--help"]);
  assert.match(top.stdout, /kv namespace create TITLE/);
});

test("kv bulk delete and namespace delete ask on a terminal; no keeps everything", { skip: skip || noScript }, async () => {
  const id = await createNamespace("ask");
  const ns = ["--namespace-id", id];
  assert.equal((await isola(["kv", "key", "put", "keep", "me", ...ns])).code, 0);
  write(app, "keys.json", `["keep"]`);
  const answer = (text: string) =>
    async ({ waitFor, type }: { waitFor(re: RegExp): Promise<void>; type(text: string): void }): Promise<void> => {
      await waitFor(/\[y\/N\] /);
      type(text);
    };
  const no = await runCliInTty(["kv", "bulk", "delete", "keys.json", ...ns], { cwd: app, env, converse: answer("n\r") });
  assert.equal(no.code, 0, no.output);
  assert.match(no.output, /Delete 1 key\(s\) from KV namespace/);
  assert.match(no.output, /Not deleted\./);
  const nsNo = await runCliInTty(["kv", "namespace", "delete", ...ns], { cwd: app, env, converse: answer("\r") });
  assert.match(nsNo.output, /Not deleted\./);
  assert.equal((await isola(["kv", "key", "get", "keep", ...ns])).stdout, "me");
  const yes = await runCliInTty(["kv", "bulk", "delete", "keys.json", ...ns], { cwd: app, env, converse: answer("y\r") });
  assert.equal(yes.code, 0, yes.output);
  assert.match(yes.output, /Deleted 1 key\(s\)/);
});

test("kv helpers: bulk files, batches by count and bytes, binding names", () => {
  assert.deepEqual(parseBulkPut(`[{"key":"a","value":"b","expiration_ttl":60}]`, "f"), [{ key: "a", value: "b", expiration_ttl: 60 }]);
  assert.throws(() => parseBulkPut(`[{"key":"a","value":"b","expiration":-1}]`, "f"), /f: \[0\]: "expiration" must be a whole number/);
  assert.deepEqual(parseBulkDelete(`["a",{"key":"b","value":"x"}]`, "f"), ["a", "b"]);
  const items = Array.from({ length: 25 }, (_, i) => `key-${i}`);
  assert.deepEqual(batches(items, 10, 1 << 20).map((b) => b.length), [10, 10, 5]);
  // 9 bytes of JSON each ("key-NN" quoted, plus a comma): 3 fit in 32 bytes.
  assert.deepEqual(batches(items.slice(10, 16), 100, 32).map((b) => b.length), [3, 3]);
  assert.deepEqual(batches(["x".repeat(100)], 10, 16).map((b) => b.length), [1], "one item larger than the cap still goes, alone");
  assert.equal(bindingName("SESSIONS"), "SESSIONS");
  assert.equal(bindingName("my app-cache"), "my_app_cache");
  assert.equal(bindingName("2024 data"), "_2024_data");
});
