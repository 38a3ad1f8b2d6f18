// Bundles a worker with esbuild the way wrangler does: ESM, the workerd/worker/browser
// conditions, and wasm/text/data/json files left as modules beside the bundle.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import * as esbuild from "esbuild";
import type { Rule } from "./config.js";

export type SourceMapMode = "inline" | "linked" | "none";

export interface BundleOptions {
  /** Entry file (absolute, or relative to `root`). */
  entry: string;
  /** Project folder: module names are relative to it. */
  root: string;
  /** Output folder; emptied first. */
  outdir: string;
  rules?: Rule[];
  sourcemap?: SourceMapMode;
  minify?: boolean;
}

export interface Module {
  /** Name in the version (relative path with '/'). */
  name: string;
  /** File on disk in the output folder. */
  path: string;
  contentType: string;
}

export interface BundleResult {
  outdir: string;
  main: string;
  /** Every module, main first. */
  modules: Module[];
  /** Every input file (for watching). */
  inputs: string[];
}

/** Wrangler's default rules, plus JSON kept as a module for the runtime. */
export const DEFAULT_RULES: Rule[] = [
  { type: "CompiledWasm", globs: ["**/*.wasm", "**/*.wasm?module"] },
  { type: "Text", globs: ["**/*.txt", "**/*.html"] },
  { type: "Data", globs: ["**/*.bin"] },
  { type: "Json", globs: ["**/*.json"] },
];

const CONTENT_TYPES: Record<string, string> = {
  js: "application/javascript+module",
  mjs: "application/javascript+module",
  wasm: "application/wasm",
  json: "application/json",
  txt: "text/plain",
  html: "text/plain",
  bin: "application/octet-stream",
};

export function contentTypeOf(name: string): string {
  const ext = name.slice(name.lastIndexOf(".") + 1);
  return CONTENT_TYPES[ext] ?? "application/octet-stream";
}

/** A glob (with `**`, `*`, `?`) as a regular expression over '/'-paths. */
export function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === "*" && glob[i + 1] === "*") {
      re += glob[i + 2] === "/" ? "(?:.*/)?" : ".*";
      i += glob[i + 2] === "/" ? 2 : 1;
    } else if (c === "*") re += "[^/]*";
    else re += c.replace(/[.+^${}()|[\]\\?]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

/** The extension the runtime knows a rule type by. */
const TYPE_EXT: Record<Rule["type"], string | undefined> = {
  ESModule: undefined,
  CompiledWasm: "wasm",
  Text: "txt",
  Data: "bin",
  Json: "json",
};

function toPosix(p: string): string {
  return p.split(sep).join("/");
}

/** An esbuild error as `file:line:column: message` lines. */
export function formatMessages(messages: esbuild.Message[]): string {
  return messages
    .map((m) => {
      const loc = m.location;
      const where = loc ? `${loc.file}:${loc.line}:${loc.column + 1}: ` : "";
      const snippet = loc?.lineText ? `\n    ${loc.lineText}\n    ${" ".repeat(loc.column)}^` : "";
      return `${where}error: ${m.text}${snippet}`;
    })
    .join("\n");
}

export class BundleError extends Error {
  override name = "BundleError";
}

export async function bundle(options: BundleOptions): Promise<BundleResult> {
  const root = resolve(options.root);
  const entry = isAbsolute(options.entry) ? options.entry : resolve(root, options.entry);
  const outdir = resolve(options.outdir);
  const rules = [...(options.rules ?? []), ...DEFAULT_RULES];
  const compiled = rules.map((r) => ({ rule: r, res: r.globs.map(globToRegExp) }));
  const copies = new Map<string, string>(); // module name -> absolute source
  const taken = new Map<string, string>(); // absolute source -> module name

  const moduleName = (abs: string, type: Rule["type"]): string => {
    const known = taken.get(abs);
    if (known) return known;
    const rel = toPosix(relative(root, abs));
    let name =
      !rel.startsWith("..") && !isAbsolute(rel) && !rel.split("/").includes("node_modules")
        ? rel
        : `${createHash("sha1").update(abs).digest("hex").slice(0, 8)}-${basename(abs)}`;
    const want = TYPE_EXT[type];
    if (want && !name.endsWith(`.${want}`) && !(want === "txt" && name.endsWith(".html"))) name += `.${want}`;
    if (name === "index.js") name = `_${name}`;
    taken.set(abs, name);
    copies.set(name, abs);
    return name;
  };

  const modulesPlugin: esbuild.Plugin = {
    name: "isola-module-rules",
    setup(build) {
      build.onResolve({ filter: /.*/ }, async (args) => {
        if (args.kind === "entry-point" || args.pluginData === "isola-inner") return undefined;
        const spec = args.path.replace(/\?module$/, "");
        for (const { rule, res } of compiled) {
          if (rule.type === "ESModule") continue;
          // require() of an external module cannot work in an ES module bundle; JSON is
          // inlined there (CommonJS packages often require their own .json files).
          if (rule.type === "Json" && args.kind === "require-call") return undefined;
          if (!res.some((re) => re.test(spec) || re.test(args.path) || re.test(toPosix(spec)))) continue;
          const found = await build.resolve(spec, {
            kind: args.kind,
            resolveDir: args.resolveDir,
            importer: args.importer,
            pluginData: "isola-inner",
          });
          if (found.errors.length > 0) return { errors: found.errors };
          const name = moduleName(found.path, rule.type);
          // The bundle sits at the output root, so "./name" resolves to the copy.
          return { path: `./${name}`, external: true };
        }
        return undefined;
      });
    },
  };

  let result: esbuild.BuildResult<{ metafile: true; write: false }>;
  try {
    result = await esbuild.build({
      entryPoints: [entry],
      absWorkingDir: root,
      bundle: true,
      format: "esm",
      platform: "neutral",
      target: "es2022",
      conditions: ["workerd", "worker", "browser"],
      mainFields: ["browser", "module", "main"],
      resolveExtensions: [".tsx", ".ts", ".jsx", ".mjs", ".js", ".json"],
      sourcemap: options.sourcemap === "linked" ? "linked" : options.sourcemap === "inline" ? "inline" : false,
      minify: options.minify ?? false,
      metafile: true,
      write: false,
      logLevel: "silent",
      outfile: join(outdir, "index.js"),
      plugins: [modulesPlugin],
    });
  } catch (e) {
    const failure = e as esbuild.BuildFailure;
    if (Array.isArray(failure.errors)) throw new BundleError(formatMessages(failure.errors));
    throw e;
  }
  rmSync(outdir, { recursive: true, force: true });
  mkdirSync(outdir, { recursive: true });
  for (const f of result.outputFiles) {
    mkdirSync(dirname(f.path), { recursive: true });
    writeFileSync(f.path, f.contents);
  }
  const modules: Module[] = [{ name: "index.js", path: join(outdir, "index.js"), contentType: CONTENT_TYPES["js"]! }];
  for (const [name, src] of copies) {
    const dest = join(outdir, ...name.split("/"));
    mkdirSync(dirname(dest), { recursive: true });
    copyFileSync(src, dest);
    modules.push({ name, path: dest, contentType: contentTypeOf(name) });
  }
  const inputs = [...Object.keys(result.metafile.inputs).map((p) => resolve(root, p)), ...copies.values()];
  return { outdir, main: "index.js", modules, inputs };
}

/** Reads a bundle's modules into memory (for an upload). */
export function readModules(result: BundleResult): { module: Module; bytes: Buffer }[] {
  return result.modules.map((module) => ({ module, bytes: readFileSync(module.path) }));
}
