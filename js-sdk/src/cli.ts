#!/usr/bin/env node
// The `isola` command line.
import { readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { fileURLToPath } from "node:url";
import {
  ApiError,
  Client,
  credentialsPath,
  deleteCredentials,
  loadCredentials,
  requireCredentials,
  saveCredentials,
  type Deployment,
  type Metadata,
  type VersionInfo,
} from "./api.js";
import { bundle, BundleError, readModules } from "./bundle.js";
import { ConfigError, loadConfig, readDevVars, type Config } from "./config.js";
import { dev, requireMain, runBuildCommand } from "./dev.js";
import { EdgeNotFound } from "./edge.js";
import { UsageError } from "./errors.js";
import { init, TEMPLATES, type Template } from "./init.js";
import { cmdKv, KvFileError } from "./kv.js";
import { withProgress } from "./progress.js";
import { applyQueues, cmdQueues, consumerLine } from "./queues.js";
import { parseSecretsFile, SecretsFileError } from "./secrets.js";
import { cmdTail } from "./tail.js";
import { envTypes } from "./typesgen.js";

const out = (s: string): void => void process.stdout.write(s + "\n");
const err = (s: string): void => void process.stderr.write(s + "\n");

const HELP = `isola — build, run and deploy Isola workers

Usage: isola <command> [options]

Commands:
  init [DIR] [--template hello|scheduled|hono] [--ts|--js] [-y]   create a worker project
  dev [--port 8787] [--ip 127.0.0.1] [--var K:V]... [--env NAME] [--test-scheduled]
                                         run the worker locally, reloading on change;
                                         --test-scheduled: GET /__scheduled?cron=... runs
                                         the scheduled handler
  deploy [--env NAME] [--dry-run --outdir DIR] [--message M] [--json]
                                         upload a version, deploy it at 100 %, add routes,
                                         apply [triggers] crons and [[queues.consumers]]
  triggers deploy [--env NAME]           apply only the config's [triggers] crons
  versions list [--json]                 the worker's versions
  versions view ID [--json]              one version: modules, vars' names, limits, message
  versions upload [--message M]          upload a version without deploying it
  versions deploy ID@PCT [ID@PCT] -y     split traffic between one or two versions
  deployments list [--json]              the worker's deployments
  rollback                               back to the previous deployment
  secret put NAME | list [--json] | delete NAME
  secret bulk FILE                       set many secrets at once from a JSON object or
                                         .env file (- reads stdin); all or none
  types                                  write worker-configuration.d.ts (interface Env)
  tail [WORKER] [--format pretty|json] [--status ok|error|canceled]... [--method M]...
       [--header K:V] [--ip IP]... [--search TEXT] [--sampling-rate R] [--version-id ID]
                                         live events, logs and exceptions from every edge
                                         (\`isola tail --help\`)
  kv namespace create TITLE | list | delete
  kv key put KEY [VALUE] | get KEY | list | delete KEY
  kv bulk put FILE | delete FILE         KV namespaces and values (\`isola kv --help\`);
                                         --binding NAME or --namespace-id ID picks one
  queues create NAME | list | info NAME | delete NAME
  queues consumer add QUEUE WORKER | consumer remove QUEUE WORKER
  queues send QUEUE BODY                 queues, their consumer, and sending a message
                                         (\`isola queues --help\`)
  login --api URL [--token T]            store API credentials
  logout                                 forget them
  whoami                                 check the credentials against the API

Common options: --config FILE (default: isola.toml, isola.json(c), wrangler.toml/json(c)),
--cwd DIR, --help. ISOLA_API_URL and ISOLA_API_TOKEN override stored credentials.
On a terminal, bundling and uploading show progress on stderr.

Examples:
  isola init my-worker --template hono -y
  isola dev --port 8787 --var GREETING:hi
  isola deploy --env staging --message "new greeting"
  isola deploy --dry-run --outdir dist
  isola triggers deploy
  echo "$TOKEN" | isola secret put API_TOKEN
  isola versions deploy 0a1b@10% 2c3d@90% -y
  isola kv namespace create SESSIONS
  isola kv key put greeting hello --binding SESSIONS
  isola queues create jobs
  isola queues send jobs '{"id":7}'
  isola tail --status error`;

function version(): string {
  const pkg = join(fileURLToPath(import.meta.url), "..", "..", "package.json");
  return (JSON.parse(readFileSync(pkg, "utf8")) as { version: string }).version;
}

type Options = NonNullable<ParseArgsConfig["options"]>;
const COMMON: Options = {
  help: { type: "boolean", short: "h" },
  config: { type: "string", short: "c" },
  cwd: { type: "string" },
  env: { type: "string", short: "e" },
  json: { type: "boolean" },
  yes: { type: "boolean", short: "y" },
};

function parse(args: string[], options: Options): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args, options: { ...COMMON, ...options }, allowPositionals: true, strict: true });
    return { values: values as Record<string, string | boolean | string[] | undefined>, positionals };
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\nRun \`isola --help\` for usage.`);
  }
}

function str(v: string | boolean | string[] | undefined): string | undefined {
  return typeof v === "string" ? v : undefined;
}

function projectConfig(values: Record<string, string | boolean | string[] | undefined>): Config {
  const base = resolve(str(values["cwd"]) ?? ".");
  const where = str(values["config"]) ? resolve(base, str(values["config"])!) : base;
  const env = str(values["env"]);
  const config = loadConfig(where, env !== undefined ? { env } : {});
  for (const w of config.warnings) err(`warning: ${w}`);
  return config;
}

function workerName(config: Config): string {
  if (!config.name) throw new ConfigError(`${config.file}: set \`name\`, the worker's name`);
  return config.name;
}

async function readLine(prompt: string, hidden = false): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  if (hidden) {
    const rlw = rl as unknown as { _writeToOutput: (s: string) => void };
    rlw._writeToOutput = (s: string) => {
      if (s.includes(prompt)) process.stderr.write(prompt);
    };
  }
  return new Promise((res) =>
    rl.question(prompt, (answer) => {
      rl.close();
      if (hidden) process.stderr.write("\n");
      res(answer.trim());
    }),
  );
}

async function readStdinBytes(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function readStdin(): Promise<string> {
  return (await readStdinBytes()).toString("utf8");
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n");
}

function when(v: unknown): string {
  if (typeof v === "number") return new Date(v * (v < 1e12 ? 1000 : 1)).toISOString();
  return String(v ?? "");
}

function firstLine(s: string | null): string {
  const line = (s ?? "").split("\n")[0]!;
  return line.length > 50 ? line.slice(0, 49) + "…" : line;
}

function split(d: Deployment): string {
  return d.versions.map((v) => `${v.id}@${v.percentage}%`).join(" ");
}

async function cmdInit(args: string[]): Promise<void> {
  const { values, positionals } = parse(args, {
    template: { type: "string", short: "t" },
    ts: { type: "boolean" },
    js: { type: "boolean" },
    force: { type: "boolean" },
  });
  const template = (str(values["template"]) ?? "hello") as Template;
  if (!TEMPLATES.includes(template)) throw new UsageError(`unknown template ${template}; pick one of ${TEMPLATES.join(", ")}`);
  if (values["ts"] && values["js"]) throw new UsageError("pass --ts or --js, not both");
  const dir = resolve(str(values["cwd"]) ?? ".", positionals[0] ?? ".");
  const files = init({ dir, template, ts: !values["js"], force: values["force"] === true });
  out(`Created a ${template} worker in ${dir}:`);
  for (const f of files) out(`  ${f}`);
  out(`\nNext: cd ${positionals[0] ?? "."} && npm install && npx isola dev`);
}

async function cmdDev(args: string[]): Promise<void> {
  const { values } = parse(args, {
    port: { type: "string", short: "p" },
    ip: { type: "string" },
    var: { type: "string", multiple: true },
    "test-scheduled": { type: "boolean" },
  });
  const port = Number(str(values["port"]) ?? "8787");
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port ${str(values["port"])} is not a port number`);
  const vars: Record<string, string> = {};
  for (const v of (values["var"] as string[] | undefined) ?? []) {
    const i = v.indexOf(":");
    if (i <= 0) throw new UsageError(`--var ${v}: expected NAME:VALUE`);
    vars[v.slice(0, i)] = v.slice(i + 1);
  }
  const base = resolve(str(values["cwd"]) ?? ".");
  const env = str(values["env"]);
  await dev({
    dir: str(values["config"]) ? resolve(base, str(values["config"])!) : base,
    port,
    ip: str(values["ip"]) ?? "127.0.0.1",
    vars,
    ...(env !== undefined ? { env } : {}),
    testScheduled: values["test-scheduled"] === true,
    log: out,
    error: err,
  });
}

function metadataOf(config: Config): Metadata {
  const limits: Metadata["limits"] = {};
  if (config.limits.cpu_ms !== undefined) limits.cpu_ms = config.limits.cpu_ms;
  if (config.limits.memory_mb !== undefined) limits.memory_mb = config.limits.memory_mb;
  if (config.limits.subrequests !== undefined) limits.subrequests = config.limits.subrequests;
  const m: Metadata = { main_module: "index.js", vars: config.vars, limits };
  if (config.compatibility_date) m.compatibility_date = config.compatibility_date;
  // Left out when empty, as the server leaves it out of the manifest (same version ids).
  if (config.services.length > 0) {
    m.services = config.services.map((s) => ({
      binding: s.binding,
      service: s.service,
      ...(s.entrypoint !== undefined ? { entrypoint: s.entrypoint } : {}),
    }));
  }
  if (config.kv_namespaces.length > 0) {
    m.kv_namespaces = config.kv_namespaces.map((k) => ({ binding: k.binding, id: k.id }));
  }
  // Consumers are not part of a version: deploy sets them on their queues afterwards.
  if (config.queues.producers.length > 0) {
    m.queues = { producers: config.queues.producers.map((p) => ({ binding: p.binding, queue: p.queue })) };
  }
  return m;
}

/** Longest `--message`; the API refuses longer ones. */
const MAX_MESSAGE_CHARS = 1000;

/** Builds the worker and uploads it (or, with --dry-run, writes it out); returns the version and config. */
async function buildAndUpload(
  args: string[],
  verb: "deploy" | "upload",
): Promise<{ config: Config; name: string; client: Client; version: VersionInfo; json: boolean } | undefined> {
  const { values } = parse(args, {
    "dry-run": { type: "boolean" },
    outdir: { type: "string" },
    message: { type: "string", short: "m" },
    minify: { type: "boolean" },
  });
  const json = values["json"] === true;
  // With --json, stdout carries one JSON document and nothing else.
  const say = json ? (): void => undefined : out;
  const config = projectConfig(values);
  const name = workerName(config);
  const message = str(values["message"]);
  if (message !== undefined && [...message].length > MAX_MESSAGE_CHARS) {
    throw new UsageError(`--message is ${[...message].length} characters; the limit is ${MAX_MESSAGE_CHARS}`);
  }
  const dry = values["dry-run"] === true;
  if (str(values["outdir"]) && !dry) throw new UsageError("--outdir goes with --dry-run");
  // Credentials are checked before the build, so a missing login fails fast.
  const client = dry ? undefined : new Client(requireCredentials());
  runBuildCommand(config);
  const outdir = dry ? resolve(str(values["outdir"]) ?? join(config.dir, "dist")) : join(config.dir, ".isola", "deploy");
  const result = await withProgress(`Bundling ${config.main ?? "the worker"}…`, () =>
    bundle({
      entry: requireMain(config),
      root: config.dir,
      outdir,
      rules: config.rules,
      sourcemap: "none",
      minify: values["minify"] === true,
    }),
  );
  const metadata = metadataOf(config);
  if (message !== undefined) metadata.message = message;
  const modules = readModules(result);
  const size = modules.reduce((n, m) => n + m.bytes.length, 0);
  const kib = `${(size / 1024).toFixed(1)} KiB`;
  if (dry) {
    // The triggers and queue consumers are applied after the upload, not part of it; the file
    // shows them too.
    const written: Record<string, unknown> = { ...metadata };
    if (config.triggers) written["triggers"] = { crons: config.triggers.crons };
    if (config.queues.consumers.length > 0) written["queues"] = { ...metadata.queues, consumers: config.queues.consumers };
    writeFileSync(join(outdir, "metadata.json"), JSON.stringify(written, null, 2) + "\n");
    if (json) {
      out(JSON.stringify({ dry_run: true, worker: name, outdir, modules: modules.map((m) => m.module.name), metadata: written }, null, 2));
      return undefined;
    }
    say(`Dry run: ${name}, ${modules.length} module(s), ${kib}, written to ${outdir}:`);
    for (const m of modules) say(`  ${m.module.name} (${m.module.contentType})`);
    say("  metadata.json");
    if (verb === "deploy" && config.routes.length) say(`Routes (not created): ${config.routes.join(", ")}`);
    if (verb === "deploy" && config.triggers) say(`Schedules (not applied): ${config.triggers.crons.length ? config.triggers.crons.join(", ") : "none (would clear them)"}`);
    if (verb === "deploy" && config.queues.consumers.length) say(`Queue consumers (not applied): ${config.queues.consumers.map((c) => c.queue).join(", ")}`);
    return undefined;
  }
  const version = await withProgress(`Uploading ${name} (${modules.length} module(s), ${kib})…`, () =>
    client!.upload(
      name,
      metadata,
      modules.map((m) => ({ name: m.module.name, contentType: m.module.contentType, bytes: m.bytes })),
    ),
  );
  say(`Uploaded ${name}: version ${version.id} (${modules.length} module(s), ${kib})`);
  if (version.message) say(`Message: ${version.message}`);
  return { config, name, client: client!, version, json };
}

/** PUT the config's crons (only when it has a [triggers] table); undefined when it has none. */
async function applyTriggers(config: Config, name: string, client: Client, context: string): Promise<string[] | undefined> {
  if (!config.triggers) return undefined;
  try {
    return (await client.putSchedules(name, config.triggers.crons)).crons;
  } catch (e) {
    if (e instanceof ApiError && (e.status === 405 || (e.status === 404 && /no endpoint/.test(e.message)))) {
      e.hint = `${context}this isola-control has no schedules endpoint (cron triggers); update it, or remove [triggers] from ${config.file}`;
    } else if (e instanceof ApiError && e.status === 400) {
      e.hint = `${context}fix \`triggers.crons\` in ${config.file} and run \`isola triggers deploy${config.env ? ` --env ${config.env}` : ""}\``;
    }
    throw e;
  }
}

function schedulesLine(crons: string[]): string {
  return crons.length ? `Schedules: ${crons.join(", ")}` : "Schedules: none (cleared)";
}

async function cmdDeploy(args: string[]): Promise<void> {
  const uploaded = await buildAndUpload(args, "deploy");
  if (!uploaded) return;
  const { config, name, client, version, json } = uploaded;
  const say = json ? (): void => undefined : out;
  const deployment = await client.deploy(name, [{ id: version.id, percentage: 100 }]);
  say(`Deployed version ${version.id} at 100% (deployment ${deployment.id})`);
  const routes: { pattern: string; existed: boolean }[] = [];
  for (const pattern of config.routes) {
    const r = await client.ensureRoute(pattern, name);
    routes.push({ pattern: r.pattern, existed: r.existed });
    say(`Route ${r.pattern}${r.existed ? " (already there)" : ""}`);
  }
  if (config.routes.length === 0) say("No routes in the config; add `routes = [\"host/*\"]` to serve it.");
  const context = `version ${version.id} is deployed; `;
  const crons = await applyTriggers(config, name, client, context);
  if (crons) say(schedulesLine(crons));
  // With --json, what deploy created still goes to stderr: stdout is the one document.
  const consumers = await applyQueues(config, name, client, { say: json ? (s) => err(s) : out, warn: (s) => err(`warning: ${s}`) }, context);
  for (const c of consumers) say(consumerLine(c));
  if (json) {
    out(
      JSON.stringify(
        { worker: name, version, deployment, routes, ...(crons ? { crons } : {}), ...(config.queues.consumers.length ? { consumers } : {}) },
        null,
        2,
      ),
    );
  }
}

async function cmdTriggers(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub !== "deploy") throw new UsageError("usage: isola triggers deploy [--env NAME] [--json]");
  const { values } = parse(rest, {});
  const config = projectConfig(values);
  const name = workerName(config);
  if (!config.triggers) {
    throw new ConfigError(`${config.file} has no [triggers] table; add \`[triggers]\` with \`crons = ["*/5 * * * *"]\` (an empty list clears the schedules)`);
  }
  const crons = (await applyTriggers(config, name, new Client(requireCredentials()), ""))!;
  if (values["json"]) return out(JSON.stringify({ worker: name, crons }, null, 2));
  out(`Applied the schedules of ${name}`);
  out(schedulesLine(crons));
}

async function cmdVersions(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub === "list") {
    const { values } = parse(rest, {});
    const name = workerName(projectConfig(values));
    const versions = await new Client(requireCredentials()).versions(name);
    if (values["json"]) return out(JSON.stringify(versions, null, 2));
    if (versions.length === 0) return out(`${name} has no versions; run \`isola deploy\``);
    out(
      table([
        ["ID", "CREATED", "HASH", "MESSAGE"],
        ...versions.map((v) => [v.id, when(v.created_at), v.hash.slice(0, 12), firstLine(v.message)]),
      ]),
    );
    return;
  }
  if (sub === "view") {
    const { values, positionals } = parse(rest, {});
    const name = workerName(projectConfig(values));
    const id = positionals[0];
    if (!id || positionals.length > 1) throw new UsageError("usage: isola versions view ID [--json]");
    const v = await new Client(requireCredentials()).version(name, id);
    if (values["json"]) return out(JSON.stringify(v, null, 2));
    out(`Version ${v.id} of ${v.worker}`);
    out(`Created:     ${when(v.created_at)}`);
    out(`Hash:        ${v.hash}`);
    if (v.message) out(`Message:     ${v.message}`);
    out(`Main module: ${v.main_module}`);
    out(`Modules:`);
    for (const m of v.modules) out(`  ${m.name} (${m.size} bytes)`);
    out(`Vars:        ${v.vars.length ? v.vars.join(", ") : "(none)"}`);
    const limits = Object.entries(v.limits).map(([k, n]) => `${k}=${n}`);
    out(`Limits:      ${limits.length ? limits.join(", ") : "(defaults)"}`);
    if (v.compatibility_date) out(`Compatibility date: ${v.compatibility_date}`);
    return;
  }
  if (sub === "upload") {
    const uploaded = await buildAndUpload(rest, "upload");
    if (uploaded?.json) out(JSON.stringify(uploaded.version, null, 2));
    else if (uploaded) out(`Not deployed; deploy it with \`isola versions deploy ${uploaded.version.id}@100 -y\``);
    return;
  }
  if (sub === "deploy") {
    const { values, positionals } = parse(rest, {});
    const name = workerName(projectConfig(values));
    if (positionals.length < 1 || positionals.length > 2) throw new UsageError("versions deploy takes one or two ID@PERCENT, e.g. `isola versions deploy A@10 B@90 -y`");
    const splits = positionals.map((p) => {
      const at = p.lastIndexOf("@");
      const id = at < 0 ? p : p.slice(0, at);
      const pct = at < 0 ? (positionals.length === 1 ? 100 : NaN) : Number(p.slice(at + 1).replace(/%$/, ""));
      if (!id || !Number.isInteger(pct) || pct < 1 || pct > 100) throw new UsageError(`${p}: expected VERSION_ID@PERCENT with a whole percentage from 1 to 100`);
      return { id, percentage: pct };
    });
    const sum = splits.reduce((n, s) => n + s.percentage, 0);
    if (sum !== 100) throw new UsageError(`the percentages add up to ${sum}; they must add up to 100`);
    const what = splits.map((s) => `${s.id} at ${s.percentage}%`).join(", ");
    if (!values["yes"]) {
      if (!process.stdin.isTTY) throw new UsageError(`pass -y to deploy ${what} without a prompt`);
      const answer = await readLine(`Deploy ${name}: ${what}? [y/N] `);
      if (!/^y(es)?$/i.test(answer)) return out("Not deployed.");
    }
    const d = await new Client(requireCredentials()).deploy(name, splits);
    out(`Deployed ${name}: ${split(d)} (deployment ${d.id})`);
    return;
  }
  throw new UsageError(
    "usage: isola versions list [--json] | isola versions view ID [--json] | isola versions upload [--message M] | isola versions deploy ID@PCT [ID@PCT] -y",
  );
}

async function cmdDeployments(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub !== "list") throw new UsageError("usage: isola deployments list [--json]");
  const { values } = parse(rest, {});
  const name = workerName(projectConfig(values));
  const ds = await new Client(requireCredentials()).deployments(name);
  if (values["json"]) return out(JSON.stringify(ds, null, 2));
  if (ds.length === 0) return out(`${name} has no deployments; run \`isola deploy\``);
  out(
    table([
      ["ID", "CREATED", "VERSIONS", "STATE"],
      ...ds.map((d) => [String(d.id), when(d.created_at), split(d), d.active ? "active" : d.rolled_back ? "rolled back" : ""]),
    ]),
  );
}

async function cmdRollback(args: string[]): Promise<void> {
  const { values } = parse(args, {});
  const name = workerName(projectConfig(values));
  const d = await new Client(requireCredentials()).rollback(name);
  out(`Rolled back ${name}: now ${split(d)} (deployment ${d.id})`);
}

async function cmdSecret(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  const { values, positionals } = parse(rest, {});
  const name = workerName(projectConfig(values));
  const client = (): Client => new Client(requireCredentials());
  if (sub === "put") {
    const key = positionals[0];
    if (!key) throw new UsageError("usage: isola secret put NAME (the value from stdin, or a prompt)");
    let value: string;
    if (process.stdin.isTTY) value = await readLine(`Value for ${key}: `, true);
    else value = (await readStdin()).replace(/\r?\n$/, "");
    if (value === "") throw new UsageError(`the value of ${key} is empty; pipe it in (echo VALUE | isola secret put ${key}) or run on a terminal`);
    const r = await client().putSecret(name, key, value);
    out(`Secret ${r.key} set on ${name}; the edges get it with revision ${r.revision}`);
    return;
  }
  if (sub === "bulk") {
    const file = positionals[0];
    if (!file || positionals.length > 1) throw new UsageError("usage: isola secret bulk FILE (a JSON object or .env lines; - reads stdin)");
    let text: string;
    try {
      text = file === "-" ? await readStdin() : readFileSync(resolve(str(values["cwd"]) ?? ".", file), "utf8");
    } catch (e) {
      throw new SecretsFileError(`cannot read ${file}: ${(e as Error).message}`);
    }
    const secrets = parseSecretsFile(text, file === "-" ? "stdin" : file);
    if (Object.keys(secrets).length === 0) throw new UsageError(`${file === "-" ? "stdin" : file} has no secrets`);
    const r = await client().putSecrets(name, secrets);
    out(`${r.keys.length} secret(s) set on ${name}: ${r.keys.join(", ")}; the edges get them with revision ${r.revision}`);
    return;
  }
  if (sub === "list") {
    const secrets = await client().secrets(name);
    if (values["json"]) return out(JSON.stringify(secrets, null, 2));
    if (secrets.length === 0) return out(`${name} has no secrets`);
    out(table([["NAME", "UPDATED"], ...secrets.map((s) => [s.key, when(s.updated_at)])]));
    return;
  }
  if (sub === "delete") {
    const key = positionals[0];
    if (!key) throw new UsageError("usage: isola secret delete NAME");
    await client().deleteSecret(name, key);
    out(`Secret ${key} deleted from ${name}`);
    return;
  }
  throw new UsageError("usage: isola secret put NAME | isola secret bulk FILE | isola secret list [--json] | isola secret delete NAME");
}

async function cmdTypes(args: string[]): Promise<void> {
  const { values } = parse(args, {});
  const config = projectConfig(values);
  const secrets = new Set(Object.keys(readDevVars(config.dir, config.env)));
  const { creds } = loadCredentials();
  if (creds && config.name) {
    try {
      for (const s of await new Client(creds).secrets(config.name)) secrets.add(s.key);
    } catch {
      // offline or not deployed yet: .dev.vars only
    }
  }
  const file = join(config.dir, "worker-configuration.d.ts");
  writeFileSync(file, envTypes(config, [...secrets].sort()));
  out(`Wrote ${file}`);
}

async function cmdLogin(args: string[]): Promise<void> {
  const { values } = parse(args, { api: { type: "string" }, token: { type: "string" } });
  const api = str(values["api"]) ?? process.env["ISOLA_API_URL"];
  if (!api) throw new UsageError("usage: isola login --api URL [--token TOKEN]");
  let token = str(values["token"]) ?? process.env["ISOLA_API_TOKEN"];
  if (!token) {
    if (!process.stdin.isTTY) throw new UsageError("pass --token TOKEN (stdin is not a terminal to ask on)");
    token = await readLine("API token: ", true);
  }
  const creds = { api: api.replace(/\/+$/, ""), token };
  const workers = await new Client(creds).workers();
  const path = saveCredentials(creds);
  out(`Logged in to ${creds.api} (${workers.length} worker(s)); credentials in ${path}`);
}

async function cmdWhoami(args: string[]): Promise<void> {
  parse(args, {});
  const { creds, source } = loadCredentials();
  if (!creds) throw new ApiError(0, "not_logged_in", "not logged in; run `isola login --api URL`");
  const workers = await new Client(creds).workers();
  out(`API ${creds.api} (credentials from ${source})`);
  out(`The token works: ${workers.length} worker(s)${workers.length ? `: ${workers.map((w) => w.name).join(", ")}` : ""}`);
}

async function cmdKvWithDeps(args: string[]): Promise<void> {
  await cmdKv(args, {
    projectConfig,
    client: () => new Client(requireCredentials()),
    out,
    write: (bytes) => void process.stdout.write(bytes),
    readStdin: readStdinBytes,
    confirm: async (question) => {
      if (!process.stdin.isTTY) return undefined;
      return /^y(es)?$/i.test(await readLine(`${question} [y/N] `));
    },
  });
}

async function cmdQueuesWithDeps(args: string[]): Promise<void> {
  await cmdQueues(args, {
    client: () => new Client(requireCredentials()),
    out,
    readStdin: readStdinBytes,
    confirm: async (question) => {
      if (!process.stdin.isTTY) return undefined;
      return /^y(es)?$/i.test(await readLine(`${question} [y/N] `));
    },
  });
}

/** `isola tail` until Ctrl-C (or the server closes it); the exit status. */
async function cmdTailWithDeps(args: string[]): Promise<number> {
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  // `isola tail | head` ends the tail when the reader goes away.
  const onStdoutError = (e: NodeJS.ErrnoException): void => {
    if (e.code === "EPIPE") stop.abort();
    else throw e;
  };
  process.stdout.on("error", onStdoutError);
  try {
    return await cmdTail(args, {
      projectConfig,
      creds: requireCredentials,
      io: { out, err },
      isTTY: process.stdout.isTTY === true,
      signal: stop.signal,
    });
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    process.stdout.off("error", onStdoutError);
  }
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...args] = argv;
  try {
    // `isola tail --help` has its own page.
    if (cmd === "tail") return await cmdTailWithDeps(args);
    // So has `isola queues ... --help`.
    if (cmd === "queues") {
      await cmdQueuesWithDeps(args);
      return 0;
    }
    // `isola kv ... --help` has a page per subcommand.
    if (cmd === "kv") {
      await cmdKvWithDeps(args);
      return 0;
    }
    if (args.includes("--help") || args.includes("-h")) {
      out(HELP);
      return 0;
    }
    switch (cmd) {
      case undefined:
      case "help":
      case "--help":
      case "-h":
        out(HELP);
        return 0;
      case "--version":
      case "-v":
        out(version());
        return 0;
      case "init":
        await cmdInit(args);
        return 0;
      case "dev":
        await cmdDev(args);
        return 0;
      case "deploy":
        await cmdDeploy(args);
        return 0;
      case "triggers":
        await cmdTriggers(args);
        return 0;
      case "versions":
        await cmdVersions(args);
        return 0;
      case "deployments":
        await cmdDeployments(args);
        return 0;
      case "rollback":
        await cmdRollback(args);
        return 0;
      case "secret":
        await cmdSecret(args);
        return 0;
      case "types":
        await cmdTypes(args);
        return 0;
      case "login":
        await cmdLogin(args);
        return 0;
      case "logout":
        out(deleteCredentials() ? `Removed ${credentialsPath()}` : "Not logged in");
        return 0;
      case "whoami":
        await cmdWhoami(args);
        return 0;
      default:
        throw new UsageError(`unknown command ${cmd}; run \`isola --help\``);
    }
  } catch (e) {
    if (e instanceof ApiError) err(`✘ ${e.describe()}`);
    else if (e instanceof BundleError) err(`✘ build failed\n${e.message}`);
    else if (e instanceof ConfigError || e instanceof UsageError || e instanceof EdgeNotFound || e instanceof SecretsFileError || e instanceof KvFileError) err(`✘ ${e.message}`);
    else err(`✘ ${(e as Error).stack ?? String(e)}`);
    return e instanceof UsageError ? 2 : 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
