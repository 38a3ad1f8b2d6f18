// `isola dev`: bundle, serve with isola-edge, rebuild and restart on change.
import { execSync } from "node:child_process";
import { createHash } from "node:crypto";
import { watch, readFileSync, rmSync, mkdirSync, type FSWatcher } from "node:fs";
import { createServer } from "node:net";
import { basename, join, relative, resolve, sep } from "node:path";
import { bundle, BundleError, type BundleResult } from "./bundle.js";
import { loadConfig, readDevVars, type Config, type JsonValue } from "./config.js";
import { devEdgeFlags, findEdgeBinary, startDevEdge, type RunningEdge } from "./edge.js";

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

const IGNORED = ["node_modules", ".isola", ".git", "dist", ".wrangler"];

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

  const build = async (): Promise<BundleResult> => {
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
  lastGood = await build();
  let sameVars = JSON.stringify(vars());
  edge = await start(lastGood);
  o.log(`Ready on http://${listen}`);
  if (testScheduled) o.log(`Run the scheduled handler: curl "http://${listen}/__scheduled?cron=*+*+*+*+*"`);

  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  const rebuild = async (): Promise<void> => {
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
    if (sameOutput(lastGood!, next) && sameVars === JSON.stringify(vars())) {
      rmSync(next.outdir, { recursive: true, force: true });
      return;
    }
    sameVars = JSON.stringify(vars());
    await edge?.stop();
    try {
      edge = await start(next);
    } catch (e) {
      o.error(`✘ the worker did not start; going back to the last good build\n${(e as Error).message}`);
      edge = await start(lastGood!);
      rmSync(next.outdir, { recursive: true, force: true });
      return;
    }
    if (lastGood && lastGood.outdir !== next.outdir) rmSync(lastGood.outdir, { recursive: true, force: true });
    lastGood = next;
    o.log(`↻ reloaded; Ready on http://${listen}`);
  };

  // Only the last build's inputs, the config and .dev.vars matter (a log file written into
  // the project must not loop); after a failed build any change may be the fix.
  const relevant = (file: string): boolean => {
    const abs = join(config.dir, file);
    if (!lastFailed && !lastGood!.inputs.includes(abs) && abs !== config.file && !basename(abs).startsWith(".dev.vars")) return false;
    return true;
  };
  const watcher: FSWatcher = watch(config.dir, { recursive: true }, (_event, file) => {
    if (file) {
      const parts = String(file).split(sep);
      if (parts.some((p) => IGNORED.includes(p))) return;
      if (relative(config.dir, join(config.dir, String(file))).startsWith("..")) return;
      if (!relevant(String(file))) return;
    }
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => {
      running = running.then(rebuild);
    }, 50);
  });

  await new Promise<void>((done) => {
    const stop = (): void => {
      watcher.close();
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
