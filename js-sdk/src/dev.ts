// `isola dev`: bundle, serve with isola-edge, rebuild and restart on change.
import { execSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, rmSync, mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { bundle, BundleError, type BundleResult } from "./bundle.js";
import { loadConfig, readDevVars, type Config, type JsonValue } from "./config.js";
import { devEdgeFlags, findEdgeBinary, startDevEdge, type RunningEdge } from "./edge.js";
import { Contents, FolderWatch, IGNORED, filesIn, foldersOf, foldersUnder, within } from "./watch.js";

export interface DevOptions {
  dir: string;
  port: number;
  ip: string;
  vars: Record<string, string>;
  env?: string;
  /** Pass `--test-scheduled` to the edge: `GET /__scheduled?cron=...` runs the scheduled handler. */
  testScheduled?: boolean;
  log: (line: string) => void;
  error: (line: string) => void;
}

async function freePort(ip: string): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, ip, () => {
      const a = srv.address();
      const port = typeof a === "object" && a ? a.port : 0;
      srv.close(() => res(port));
    });
  });
}

export function runBuildCommand(config: Config): void {
  if (!config.build?.command) return;
  execSync(config.build.command, { cwd: resolve(config.dir, config.build.cwd ?? "."), stdio: "inherit" });
}

export function requireMain(config: Config): string {
  if (!config.main) throw new Error(`${config.file}: set \`main\` to the worker's entry module, e.g. main = "src/index.ts"`);
  return resolve(config.dir, config.main);
}

function digest(r: BundleResult): string {
  const h = createHash("sha256");
  for (const m of r.modules) {
    // The inline source map names the build folder, which differs per build.
    const text = readFileSync(m.path).toString("latin1").replace(/\/\/# sourceMappingURL=.*$/m, "");
    h.update(m.name).update("\0").update(text).update("\0");
  }
  return h.digest("hex");
}

function sameOutput(a: BundleResult, b: BundleResult): boolean {
  return digest(a) === digest(b);
}

/** Runs until SIGINT/SIGTERM. */
export async function dev(o: DevOptions): Promise<void> {
  let config = loadConfig(o.dir, o.env !== undefined ? { env: o.env } : {});
  for (const w of config.warnings) o.error(`warning: ${w}`);
  const bin = findEdgeBinary(config.dir);
  o.log(`Using isola-edge at ${bin}`);
  // Cron triggers and --test-scheduled need an edge that has the flags; an older one still
  // serves fetch, with a warning instead of a failed start.
  const flags = config.triggers?.crons.length || o.testScheduled ? devEdgeFlags(bin) : new Set<string>();
  const cronsOk = flags.has("--cron");
  const testScheduled = o.testScheduled === true && flags.has("--test-scheduled");
  if (config.triggers?.crons.length && !cronsOk) {
    o.error(`warning: this isola-edge (${bin}) does not run cron triggers in dev (no --cron flag); update it to run ${config.triggers.crons.join(", ")}`);
  }
  if (o.testScheduled && !testScheduled) {
    o.error(`warning: this isola-edge (${bin}) has no --test-scheduled; update it to get GET /__scheduled`);
  }
  const port = o.port === 0 ? await freePort(o.ip) : o.port;
  const listen = `${o.ip.includes(":") ? `[${o.ip}]` : o.ip}:${port}`;
  const work = join(config.dir, ".isola", "dev");
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  let generation = 0;
  let edge: RunningEdge | undefined;
  let lastGood: BundleResult | undefined;

  const contents = new Contents();
  const build = async (): Promise<BundleResult> => {
    const read = (lastGood?.inputs ?? []).filter((f) => !ignored(f));
    contents.record([...read, ...filesIn(watchDirs().flatMap(foldersUnder))]);
    runBuildCommand(config);
    generation += 1;
    return bundle({
      entry: requireMain(config),
      root: config.dir,
      outdir: join(work, `build-${generation}`),
      rules: config.rules,
      sourcemap: "inline",
    });
  };

  const vars = (): Record<string, JsonValue> => ({ ...config.vars, ...readDevVars(config.dir, config.env), ...o.vars });

  const start = async (result: BundleResult): Promise<RunningEdge> =>
    startDevEdge({
      bin,
      entry: join(result.outdir, result.main),
      listen,
      ...(config.name ? { name: config.name } : {}),
      vars: vars(),
      ...(config.limits.cpu_ms !== undefined ? { cpuMs: config.limits.cpu_ms } : {}),
      ...(config.limits.memory_mb !== undefined ? { memoryMb: config.limits.memory_mb } : {}),
      ...(cronsOk && config.triggers ? { crons: config.triggers.crons } : {}),
      testScheduled,
      print: o.log,
    });

  let lastFailed = false;
  let sameVars = "";
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  const rebuild = async (): Promise<void> => {
    const good = lastGood;
    if (good === undefined) return;
    let next: BundleResult;
    try {
      config = loadConfig(config.file, o.env !== undefined ? { env: o.env } : {});
      next = await build();
    } catch (e) {
      lastFailed = true;
      if (e instanceof BundleError) o.error(`✘ build failed; still serving the last good build\n${e.message}`);
      else o.error(`✘ ${(e as Error).message}; still serving the last good build`);
      return;
    }
    lastFailed = false;
    if (sameOutput(good, next) && sameVars === JSON.stringify(vars())) {
      rmSync(next.outdir, { recursive: true, force: true });
      return;
    }
    sameVars = JSON.stringify(vars());
    await edge?.stop();
    try {
      edge = await start(next);
    } catch (e) {
      o.error(`✘ the worker did not start; going back to the last good build\n${(e as Error).message}`);
      edge = await start(good);
      rmSync(next.outdir, { recursive: true, force: true });
      return;
    }
    if (good.outdir !== next.outdir) rmSync(good.outdir, { recursive: true, force: true });
    lastGood = next;
    o.log(`↻ reloaded; Ready on http://${listen}`);
  };

  // What counts as a change: a file the last good build read, the config, .dev.vars, a file
  // under `[build] watch_dir` when there is a build command (its sources are not esbuild's
  // inputs), before the first good build anything in a watched folder, and after a failed
  // build any file beside the last good build's inputs (the fix may be a file no build has
  // read yet, a missing import made). A file written into the project that no build reads
  // must not loop, even while builds fail (a build step's log), nor a build step that
  // rewrites what it reads with the same bytes (`Contents`).
  const watchDirs = (): string[] =>
    config.build?.command ? (config.build.watch_dir ?? ["src"]).map((d) => resolve(config.dir, d)) : [];
  const ignored = (file: string): boolean => relative(config.dir, file).split(sep).some((p) => IGNORED.includes(p));
  const relevant = (file: string): boolean => {
    if (ignored(file)) return false;
    if (file === config.file || (dirname(file) === config.dir && basename(file).startsWith(".dev.vars"))) return true;
    if (lastGood === undefined) return true;
    if (lastGood.inputs.includes(file) || watchDirs().some((d) => within(d, file))) return true;
    return lastFailed && foldersOf(lastGood.inputs).has(dirname(file));
  };
  const pending = new Set<string>();
  const folders = new FolderWatch((file) => {
    if (!relevant(file)) return;
    pending.add(file);
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => {
      running = running.then(onChanges);
    }, 50);
  });
  const onChanges = async (): Promise<void> => {
    const files = [...pending];
    pending.clear();
    if (!files.some((f) => contents.changed(f))) return;
    await rebuild();
    folders.set(watched());
  };
  const watched = (): Set<string> => {
    const out = new Set([config.dir, ...watchDirs().flatMap(foldersUnder)]);
    const read = lastGood?.inputs ?? [requireMain(config)];
    for (const d of foldersOf(read)) if (!ignored(d)) out.add(d);
    return out;
  };
  // Watched before the first build starts, so that a save during it is not lost.
  folders.set(watched());

  const first = (async (): Promise<void> => {
    lastGood = await build();
    sameVars = JSON.stringify(vars());
    edge = await start(lastGood);
    folders.set(watched());
    o.log(`Ready on http://${listen}`);
    if (testScheduled) o.log(`Run the scheduled handler: curl "http://${listen}/__scheduled?cron=*+*+*+*+*"`);
  })();
  // A save while this runs rebuilds after it; if it fails, the watch stops with it.
  running = first.catch(() => undefined);
  try {
    await first;
  } catch (e) {
    folders.close();
    if (timer) clearTimeout(timer);
    throw e;
  }

  await new Promise<void>((done) => {
    const stop = (): void => {
      folders.close();
      if (timer) clearTimeout(timer);
      void running.then(() => edge?.stop()).then(() => {
        rmSync(work, { recursive: true, force: true });
        done();
      });
    };
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
}
