// Reads isola.toml / isola.json(c), or a wrangler.toml / wrangler.json(c) as is.
import { existsSync, readFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { parse as parseToml, TomlError } from "smol-toml";
import { findNodeAtLocation, parseTree, parse as parseJsonc, type ParseError, printParseErrorCode } from "jsonc-parser";

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

export interface Limits {
  cpu_ms?: number;
  memory_mb?: number;
  subrequests?: number;
}

/** A wrangler module rule: files matching `globs` are modules of `type`. */
export interface Rule {
  type: "ESModule" | "CompiledWasm" | "Text" | "Data" | "Json";
  globs: string[];
  fallthrough?: boolean;
}

/** `services = [{ binding, service, entrypoint? }]`: `env.BINDING` calls another worker. */
export interface ServiceBinding {
  binding: string;
  service: string;
  entrypoint?: string;
}

/** `kv_namespaces = [{ binding, id }]`: `env.BINDING` is the KV namespace `id`. */
export interface KvNamespaceBinding {
  binding: string;
  id: string;
}

export interface QueueProducer {
  binding: string;
  queue: string;
}

export interface QueueConsumer {
  queue: string;
  max_batch_size?: number;
  max_batch_timeout?: number;
  max_retries?: number;
  dead_letter_queue?: string;
  retry_delay?: number;
}

export interface Config {
  /** The file read (absolute path). */
  file: string;
  /** Its folder: paths in the config are relative to it. */
  dir: string;
  /** True for a wrangler.* file read as is. */
  wrangler: boolean;
  /** The environment applied, if any. */
  env?: string;
  name?: string;
  main?: string;
  compatibility_date?: string;
  routes: string[];
  vars: Record<string, JsonValue>;
  limits: Limits;
  rules: Rule[];
  /**
   * `[build]`: `command` runs before each bundle (in `cwd`); `isola dev` rebuilds when a file
   * under `watch_dir` changes (default `src`, as wrangler's), as well as when an input changes.
   */
  build?: { command?: string; cwd?: string; watch_dir?: string[] };
  /** `[triggers]`: present when the config has the table (an empty list clears the schedules). */
  triggers?: { crons: string[] };
  services: ServiceBinding[];
  kv_namespaces: KvNamespaceBinding[];
  queues: { producers: QueueProducer[]; consumers: QueueConsumer[] };
  /** Warnings to print once (unsupported keys). */
  warnings: string[];
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

export const CONFIG_FILES = [
  "isola.toml",
  "isola.json",
  "isola.jsonc",
  "wrangler.toml",
  "wrangler.json",
  "wrangler.jsonc",
] as const;

const TOP_KEYS = [
  "$schema",
  "name",
  "main",
  "compatibility_date",
  "route",
  "routes",
  "vars",
  "limits",
  "rules",
  "build",
  "env",
  "triggers",
  "services",
  "kv_namespaces",
  "queues",
];
/** Keys allowed inside [env.NAME]. */
const ENV_KEYS = TOP_KEYS.filter((k) => k !== "env" && k !== "$schema");
/** Keys an environment inherits from the top level (wrangler's "inheritable" keys). */
const INHERITED = ["main", "compatibility_date", "route", "routes", "limits", "rules", "build", "triggers"];
const LIMIT_KEYS = ["cpu_ms", "memory_mb", "subrequests"];
const BUILD_KEYS = ["command", "cwd", "watch_dir"];
const RULE_KEYS = ["type", "globs", "fallthrough"];
const RULE_TYPES = ["ESModule", "CompiledWasm", "Text", "Data", "Json"];
const TRIGGER_KEYS = ["crons"];
const SERVICE_KEYS = ["binding", "service", "entrypoint"];
const KV_KEYS = ["binding", "id"];
const QUEUE_KEYS = ["producers", "consumers"];
const PRODUCER_KEYS = ["binding", "queue"];
const CONSUMER_KEYS = ["queue", "max_batch_size", "max_batch_timeout", "max_retries", "dead_letter_queue", "retry_delay"];
const CONSUMER_NUMBERS = ["max_batch_size", "max_batch_timeout", "max_retries", "retry_delay"];

/** A key path as written in messages: `services[0].binding`. */
export function showPath(path: readonly string[]): string {
  return path.map((p, i) => (/^\d+$/.test(p) ? `[${p}]` : i === 0 ? p : `.${p}`)).join("");
}

/** Levenshtein distance. */
export function editDistance(a: string, b: string): number {
  const d: number[] = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0]!;
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = d[j]!;
      d[j] = Math.min(d[j]! + 1, d[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return d[b.length]!;
}

export function didYouMean(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const dist = editDistance(key.toLowerCase(), k.toLowerCase());
    if (dist < bestD) {
      bestD = dist;
      best = k;
    }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined;
}

/** Finds the config file in `dir` (the first of CONFIG_FILES that exists). */
export function findConfig(dir: string): string | undefined {
  for (const f of CONFIG_FILES) {
    const p = join(dir, f);
    if (existsSync(p)) return p;
  }
  return undefined;
}

type Locate = (path: string[]) => number | undefined;
type Obj = { [key: string]: unknown };

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * The 1-based line of a key path in a TOML text (tables, arrays of tables with their index as
 * a path element, dotted keys, and keys inside inline tables, roughly).
 */
function tomlLocator(text: string): Locate {
  const lines = text.split(/\r?\n/);
  const clean = (i: number): string => lines[i]!.replace(/#.*$/, "").trim();
  const isHeader = (line: string): boolean => /^\[\[?\s*[^\]]+?\s*\]\]?$/.test(line);
  return (path) => {
    let table: string[] = [];
    const counts = new Map<string, number>();
    const want = path.join(".");
    for (let i = 0; i < lines.length; i++) {
      const line = clean(i);
      const header = /^(\[\[?)\s*([^\]]+?)\s*\]\]?$/.exec(line);
      if (header) {
        table = header[2]!.split(".").map((s) => s.trim().replace(/^["']|["']$/g, ""));
        if (header[1] === "[[") {
          const k = table.join(".");
          const n = counts.get(k) ?? 0;
          counts.set(k, n + 1);
          table = [...table, String(n)];
        }
        if (table.join(".") === want) return i + 1;
        continue;
      }
      const kv = /^([A-Za-z0-9_\-."'$ ]+?)\s*=/.exec(line);
      if (kv) {
        const key = kv[1]!.split(".").map((s) => s.trim().replace(/^["']|["']$/g, ""));
        const full = [...table, ...key].join(".");
        if (full === want) return i + 1;
        if (want.startsWith(full + ".")) {
          // Inside an inline value: the innermost key's line if the value spans lines.
          const inner = path[path.length - 1]!;
          if (/^\d+$/.test(inner)) return i + 1;
          const re = new RegExp(`(^|[{,\\s])["']?${inner.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}["']?\\s*=`);
          for (let j = i; j < lines.length; j++) {
            const l = clean(j);
            if (j > i && (isHeader(l) || /^[A-Za-z0-9_\-."']+\s*=/.test(l))) break;
            if (re.test(j === i ? l.slice(kv[0].length) : l)) return j + 1;
          }
          return i + 1;
        }
      }
    }
    return undefined;
  };
}

function jsonLocator(text: string): Locate {
  const tree = parseTree(text);
  return (path) => {
    if (!tree) return undefined;
    const node = findNodeAtLocation(tree, path.map((p) => (/^\d+$/.test(p) ? Number(p) : p)));
    const offset = node?.parent?.type === "property" ? node.parent.offset : node?.offset;
    if (offset === undefined) return undefined;
    return text.slice(0, offset).split("\n").length;
  };
}

/** TOML tables as plain objects, dates as their text (smol-toml keeps the original form). */
function plain(v: unknown): unknown {
  if (v instanceof Date) return v.toISOString();
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === "object" && v !== null) {
    const out: Obj = {};
    for (const [k, x] of Object.entries(v)) out[k] = plain(x);
    return out;
  }
  return v;
}

/** Reads and parses a config file into a plain object. */
function readRaw(file: string): { raw: Obj; locate: Locate } {
  const text = readFileSync(file, "utf8");
  if (file.endsWith(".toml")) {
    try {
      const raw = plain(parseToml(text)) as Obj;
      return { raw, locate: tomlLocator(text) };
    } catch (e) {
      if (e instanceof TomlError) {
        throw new ConfigError(`${file}:${e.line}:${e.column}: invalid TOML: ${e.message.split("\n")[0]}`);
      }
      throw e;
    }
  }
  const errors: ParseError[] = [];
  const raw: unknown = parseJsonc(text, errors, { allowTrailingComma: true });
  if (errors.length > 0) {
    const e = errors[0]!;
    const line = text.slice(0, e.offset).split("\n").length;
    throw new ConfigError(`${file}:${line}: invalid JSON: ${printParseErrorCode(e.error)}`);
  }
  if (!isObj(raw)) throw new ConfigError(`${file}: the top level must be an object`);
  return { raw, locate: jsonLocator(text) };
}

export interface LoadOptions {
  env?: string;
}

/** Loads the config in `dir` (or the file `file`). */
export function loadConfig(dirOrFile: string, options: LoadOptions = {}): Config {
  const file = existsSync(dirOrFile) && !dirOrFile.match(/\.(toml|jsonc?)$/) ? findConfig(dirOrFile) : dirOrFile;
  if (!file || !existsSync(file)) {
    throw new ConfigError(
      `no isola.toml, isola.json(c) or wrangler.toml/json(c) in ${resolve(dirOrFile)}; create one with \`isola init\``,
    );
  }
  const abs = resolve(file);
  const { raw, locate } = readRaw(abs);
  const wrangler = basename(abs).startsWith("wrangler.");
  const unsupported: string[] = [];

  const unknown = (path: string[], known: readonly string[]): void => {
    const key = path[path.length - 1]!;
    if (wrangler) {
      unsupported.push(showPath(path));
      return;
    }
    const line = locate(path);
    const hint = didYouMean(key, known);
    throw new ConfigError(
      `${abs}${line ? `:${line}` : ""}: unknown key \`${showPath(path)}\`${hint ? `; did you mean \`${hint}\`?` : ""}`,
    );
  };
  const fail = (path: string[], message: string): never => {
    const line = locate(path);
    throw new ConfigError(`${abs}${line ? `:${line}` : ""}: \`${showPath(path)}\` ${message}`);
  };

  /** A list of tables with `required` string keys, optional ones among `known`, and `numbers`. */
  const checkEntries = (
    v: unknown,
    path: string[],
    known: readonly string[],
    required: readonly string[],
    numbers: readonly string[],
    shape: string,
  ): void => {
    if (!Array.isArray(v)) return fail(path, `must be a list of ${shape} tables`);
    v.forEach((entry: unknown, i) => {
      const at = [...path, String(i)];
      if (!isObj(entry)) return fail(at, `must be a table ${shape}`);
      for (const [k, x] of Object.entries(entry)) {
        if (!known.includes(k)) unknown([...at, k], known);
        else if (numbers.includes(k)) {
          if (typeof x !== "number" || !Number.isInteger(x) || x < 0) fail([...at, k], "must be a whole number");
        } else if (typeof x !== "string" || x === "") fail([...at, k], "must be a non-empty string");
      }
      for (const k of required) if (!(k in entry)) fail(at, `needs \`${k}\`: ${shape}`);
    });
  };

  const checkSection = (obj: Obj, prefix: string[], known: readonly string[]): void => {
    for (const key of Object.keys(obj)) {
      const path = [...prefix, key];
      if (!known.includes(key)) {
        unknown(path, known);
        continue;
      }
      const v = obj[key];
      switch (key) {
        case "name":
        case "main":
        case "compatibility_date":
          if (typeof v !== "string") fail(path, "must be a string");
          break;
        case "route":
          if (typeof v !== "string" && !(isObj(v) && typeof v["pattern"] === "string")) fail(path, 'must be a pattern ("host/path*") or { pattern = "..." }');
          break;
        case "routes":
          if (!Array.isArray(v)) fail(path, 'must be a list of patterns ("host/path*") or { pattern = "..." } tables');
          (v as unknown[]).forEach((r, i) => {
            if (typeof r === "string") return;
            if (isObj(r) && typeof r["pattern"] === "string") {
              const extra = Object.keys(r).filter((k) => k !== "pattern" && k !== "zone_name" && k !== "zone_id" && k !== "custom_domain");
              if (extra.length > 0) fail(path, `[${i}] has unknown key \`${extra[0]}\`; a route is { pattern = "..." }`);
              return;
            }
            fail(path, `[${i}] must be a string or { pattern = "..." }`);
          });
          break;
        case "vars":
          if (!isObj(v)) fail(path, "must be a table of NAME = value");
          break;
        case "limits":
          if (!isObj(v)) fail(path, "must be a table");
          for (const [lk, lv] of Object.entries(v as Obj)) {
            if (!LIMIT_KEYS.includes(lk)) {
              unknown([...path, lk], LIMIT_KEYS);
              continue;
            }
            if (typeof lv !== "number" || !Number.isInteger(lv) || lv <= 0) fail([...path, lk], "must be a positive whole number");
          }
          break;
        case "build":
          if (!isObj(v)) fail(path, "must be a table");
          for (const [bk, bv] of Object.entries(v as Obj)) {
            if (!BUILD_KEYS.includes(bk)) unknown([...path, bk], BUILD_KEYS);
            else if (bk === "watch_dir") {
              if (typeof bv !== "string" && !(Array.isArray(bv) && bv.every((d) => typeof d === "string"))) {
                fail([...path, bk], "must be a folder or a list of folders, e.g. \"src\"");
              }
            } else if (typeof bv !== "string") fail([...path, bk], "must be a string");
          }
          break;
        case "rules":
          if (!Array.isArray(v)) fail(path, "must be a list of { type, globs } tables");
          (v as unknown[]).forEach((r, i) => {
            if (!isObj(r)) return fail(path, `[${i}] must be a table { type, globs }`);
            for (const rk of Object.keys(r)) if (!RULE_KEYS.includes(rk)) unknown([...path, rk], RULE_KEYS);
            if (typeof r["type"] !== "string" || !RULE_TYPES.includes(r["type"])) {
              const hint = typeof r["type"] === "string" ? didYouMean(r["type"], RULE_TYPES) : undefined;
              fail(path, `[${i}].type must be one of ${RULE_TYPES.join(", ")}${hint ? `; did you mean \`${hint}\`?` : ""}`);
            }
            if (!Array.isArray(r["globs"]) || !r["globs"].every((g) => typeof g === "string")) {
              fail(path, `[${i}].globs must be a list of strings`);
            }
          });
          break;
        case "env":
          if (!isObj(v)) fail(path, "must be a table of [env.NAME] sections");
          for (const [name, section] of Object.entries(v as Obj)) {
            if (!isObj(section)) fail([...path, name], "must be a table");
            checkSection(section as Obj, [...path, name], ENV_KEYS);
          }
          break;
        case "triggers":
          if (!isObj(v)) fail(path, 'must be a table: [triggers] crons = ["*/5 * * * *"]');
          for (const [tk, tv] of Object.entries(v as Obj)) {
            if (!TRIGGER_KEYS.includes(tk)) unknown([...path, tk], TRIGGER_KEYS);
            else if (!Array.isArray(tv) || !tv.every((c) => typeof c === "string")) {
              fail([...path, tk], 'must be a list of cron expressions, e.g. ["*/5 * * * *"]');
            }
          }
          break;
        case "services":
          checkEntries(v, path, SERVICE_KEYS, ["binding", "service"], [], "{ binding, service, entrypoint? }");
          break;
        case "kv_namespaces":
          checkEntries(v, path, KV_KEYS, ["binding", "id"], [], "{ binding, id }");
          break;
        case "queues":
          if (!isObj(v)) fail(path, "must be a table with producers = [{ binding, queue }] and consumers = [{ queue, ... }]");
          for (const [qk, qv] of Object.entries(v as Obj)) {
            if (!QUEUE_KEYS.includes(qk)) unknown([...path, qk], QUEUE_KEYS);
            else if (qk === "producers") checkEntries(qv, [...path, qk], PRODUCER_KEYS, ["binding", "queue"], [], "{ binding, queue }");
            else checkEntries(qv, [...path, qk], CONSUMER_KEYS, ["queue"], CONSUMER_NUMBERS, "{ queue, max_batch_size?, max_batch_timeout?, max_retries?, dead_letter_queue?, retry_delay? }");
          }
          break;
      }
    }
  };
  checkSection(raw, [], TOP_KEYS);

  let effective: Obj = raw;
  if (options.env !== undefined) {
    const envs = isObj(raw["env"]) ? raw["env"] : {};
    const section = envs[options.env];
    if (!isObj(section)) {
      const names = Object.keys(envs);
      throw new ConfigError(
        `${abs}: no [env.${options.env}] section${names.length ? ` (there are: ${names.join(", ")})` : ""}`,
      );
    }
    effective = {};
    for (const k of INHERITED) if (k in raw) effective[k] = raw[k];
    // wrangler: the name is inherited with the environment appended.
    if (typeof raw["name"] === "string") effective["name"] = `${raw["name"]}-${options.env}`;
    Object.assign(effective, section);
  }

  const warnings: string[] = [];
  const parts: string[] = [];
  if (unsupported.length > 0) parts.push(`Isola ignores keys it does not support: ${unsupported.join(", ")}`);
  if (parts.length > 0) warnings.push(`${basename(abs)}: ${parts.join("; ")}`);

  if (options.env !== undefined && isObj(raw["env"]) && isObj(raw["env"][options.env])) {
    // An environment's own route(s) replace both inherited keys.
    const own = raw["env"][options.env] as Obj;
    if ("route" in own || "routes" in own) {
      if (!("route" in own)) delete effective["route"];
      if (!("routes" in own)) delete effective["routes"];
    }
  }
  const routeList = [...(effective["route"] !== undefined ? [effective["route"]] : []), ...((effective["routes"] as unknown[] | undefined) ?? [])];
  const routes = routeList.map((r) =>
    typeof r === "string" ? r : String((r as Obj)["pattern"]),
  );
  const rules = ((effective["rules"] as Obj[] | undefined) ?? []).map((r) => ({
    type: r["type"] as Rule["type"],
    globs: r["globs"] as string[],
    ...(typeof r["fallthrough"] === "boolean" ? { fallthrough: r["fallthrough"] } : {}),
  }));
  const config: Config = {
    file: abs,
    dir: dirname(abs),
    wrangler,
    routes,
    vars: (effective["vars"] as Record<string, JsonValue> | undefined) ?? {},
    limits: (effective["limits"] as Limits | undefined) ?? {},
    rules,
    services: entries(effective["services"], SERVICE_KEYS) as unknown as ServiceBinding[],
    kv_namespaces: entries(effective["kv_namespaces"], KV_KEYS) as unknown as KvNamespaceBinding[],
    queues: {
      producers: entries(isObj(effective["queues"]) ? effective["queues"]["producers"] : undefined, PRODUCER_KEYS) as unknown as QueueProducer[],
      consumers: entries(isObj(effective["queues"]) ? effective["queues"]["consumers"] : undefined, CONSUMER_KEYS) as unknown as QueueConsumer[],
    },
    warnings,
  };
  if (options.env !== undefined) config.env = options.env;
  if (typeof effective["name"] === "string") config.name = effective["name"];
  if (typeof effective["main"] === "string") config.main = effective["main"];
  if (typeof effective["compatibility_date"] === "string") config.compatibility_date = effective["compatibility_date"];
  if (isObj(effective["triggers"])) {
    config.triggers = { crons: ((effective["triggers"]["crons"] as string[] | undefined) ?? []).slice() };
  }
  if (isObj(effective["build"])) {
    const b = effective["build"];
    config.build = {};
    if (typeof b["command"] === "string") config.build.command = b["command"];
    if (typeof b["cwd"] === "string") config.build.cwd = b["cwd"];
    const w = b["watch_dir"];
    if (typeof w === "string") config.build.watch_dir = [w];
    else if (Array.isArray(w)) config.build.watch_dir = (w as string[]).slice();
  }
  return config;
}

/** A validated list of tables, each with only its `known` keys (a wrangler file may have more). */
function entries(v: unknown, known: readonly string[]): Obj[] {
  if (!Array.isArray(v)) return [];
  return v.filter(isObj).map((e) => Object.fromEntries(known.filter((k) => e[k] !== undefined).map((k) => [k, e[k]])));
}

/** Reads `.dev.vars` (KEY=VALUE lines; # comments; optional quotes). */
export function readDevVars(dir: string, env?: string): Record<string, string> {
  const candidates = env ? [join(dir, `.dev.vars.${env}`), join(dir, ".dev.vars")] : [join(dir, ".dev.vars")];
  const file = candidates.find((f) => existsSync(f));
  if (!file) return {};
  const out: Record<string, string> = {};
  for (const line of readFileSync(file, "utf8").split(/\r?\n/)) {
    const t = line.trim();
    if (!t || t.startsWith("#")) continue;
    const eq = t.indexOf("=");
    if (eq <= 0) continue;
    const key = t.slice(0, eq).trim().replace(/^export\s+/, "");
    let value = t.slice(eq + 1).trim();
    if ((value.startsWith('"') && value.endsWith('"')) || (value.startsWith("'") && value.endsWith("'"))) {
      value = value.slice(1, -1);
    }
    out[key] = value;
  }
  return out;
}
