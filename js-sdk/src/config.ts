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
  build?: { command?: string; cwd?: string };
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

/** Keys the server does not support yet: accepted, with a warning. */
const NOT_YET = ["triggers", "services", "kv_namespaces", "queues"] as const;
const TOP_KEYS = ["$schema", "name", "main", "compatibility_date", "route", "routes", "vars", "limits", "rules", "build", "env", ...NOT_YET];
/** Keys allowed inside [env.NAME]. */
const ENV_KEYS = TOP_KEYS.filter((k) => k !== "env" && k !== "$schema");
/** Keys an environment inherits from the top level (wrangler's "inheritable" keys). */
const INHERITED = ["main", "compatibility_date", "route", "routes", "limits", "rules", "build", "triggers"];
const LIMIT_KEYS = ["cpu_ms", "memory_mb", "subrequests"];
const BUILD_KEYS = ["command", "cwd", "watch_dir"];
const RULE_KEYS = ["type", "globs", "fallthrough"];
const RULE_TYPES = ["ESModule", "CompiledWasm", "Text", "Data", "Json"];

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

/** The 1-based line of a key path in a TOML text (tables, dotted keys and inline keys, roughly). */
function tomlLocator(text: string): Locate {
  const lines = text.split(/\r?\n/);
  return (path) => {
    let table: string[] = [];
    const want = path.join(".");
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!.replace(/#.*$/, "").trim();
      const header = /^\[\[?\s*([^\]]+?)\s*\]\]?$/.exec(line);
      if (header) {
        table = header[1]!.split(".").map((s) => s.trim().replace(/^["']|["']$/g, ""));
        if (table.join(".") === want) return i + 1;
        continue;
      }
      const kv = /^([A-Za-z0-9_\-."'$ ]+?)\s*=/.exec(line);
      if (kv) {
        const key = kv[1]!.split(".").map((s) => s.trim().replace(/^["']|["']$/g, ""));
        const full = [...table, ...key].join(".");
        if (full === want || want.startsWith(full + ".")) {
          // An inline table: look for the inner key on this line.
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
    const node = findNodeAtLocation(tree, path);
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
  const notYet: string[] = [];

  const unknown = (path: string[], known: readonly string[]): void => {
    const key = path[path.length - 1]!;
    if (wrangler) {
      unsupported.push(path.join("."));
      return;
    }
    const line = locate(path);
    const hint = didYouMean(key, known);
    throw new ConfigError(
      `${abs}${line ? `:${line}` : ""}: unknown key \`${path.join(".")}\`${hint ? `; did you mean \`${hint}\`?` : ""}`,
    );
  };
  const fail = (path: string[], message: string): never => {
    const line = locate(path);
    throw new ConfigError(`${abs}${line ? `:${line}` : ""}: \`${path.join(".")}\` ${message}`);
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
            else if (bk !== "watch_dir" && typeof bv !== "string") fail([...path, bk], "must be a string");
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
        default:
          if ((NOT_YET as readonly string[]).includes(key)) {
            const what = key === "triggers" && isObj(v) && "crons" in v ? "triggers.crons" : key;
            if (!notYet.includes(what)) notYet.push(what);
          }
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
  if (notYet.length > 0) parts.push(`${notYet.join(", ")} ${notYet.length === 1 ? "is" : "are"} accepted but not supported by the Isola server yet (ignored)`);
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
    warnings,
  };
  if (options.env !== undefined) config.env = options.env;
  if (typeof effective["name"] === "string") config.name = effective["name"];
  if (typeof effective["main"] === "string") config.main = effective["main"];
  if (typeof effective["compatibility_date"] === "string") config.compatibility_date = effective["compatibility_date"];
  if (isObj(effective["build"])) {
    const b = effective["build"];
    config.build = {};
    if (typeof b["command"] === "string") config.build.command = b["command"];
    if (typeof b["cwd"] === "string") config.build.cwd = b["cwd"];
  }
  return config;
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
