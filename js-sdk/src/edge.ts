// Finds and runs the isola-edge binary.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { delimiter, dirname, join } from "node:path";
import { createInterface } from "node:readline";

export const EDGE_PACKAGE = "@isola/edge-linux-x64-gnu";

export class EdgeNotFound extends Error {
  override name = "EdgeNotFound";
}

function executable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** ISOLA_EDGE_BIN, then the optional binary package, then `isola-edge` on PATH. */
export function findEdgeBinary(projectDir: string): string {
  const fromEnv = process.env["ISOLA_EDGE_BIN"];
  if (fromEnv) {
    if (!executable(fromEnv)) throw new EdgeNotFound(`ISOLA_EDGE_BIN=${fromEnv} is not an executable file`);
    return fromEnv;
  }
  for (const base of [join(projectDir, "package.json"), import.meta.url]) {
    try {
      const pkg = createRequire(base).resolve(`${EDGE_PACKAGE}/package.json`);
      const bin = join(dirname(pkg), "bin", "isola-edge");
      if (executable(bin)) return bin;
    } catch {
      // not installed
    }
  }
  for (const dir of (process.env["PATH"] ?? "").split(delimiter)) {
    const bin = join(dir, "isola-edge");
    if (dir && existsSync(bin) && executable(bin)) return bin;
  }
  throw new EdgeNotFound(
    [
      "no isola-edge binary found; `isola dev` runs your worker in it. Get one of these ways:",
      "  - build it from the Isola repository: `cargo build --release -p isola-edge`, then",
      "    put target/release/isola-edge on your PATH or set ISOLA_EDGE_BIN=/path/to/isola-edge",
      `  - or, on linux-x64 with glibc, install the prebuilt package where your registry has it: npm install -D ${EDGE_PACKAGE}`,
    ].join("\n"),
  );
}

export interface DevEdgeOptions {
  bin: string;
  entry: string;
  listen: string;
  name?: string;
  vars: Record<string, unknown>;
  cpuMs?: number;
  memoryMb?: number;
  /** `--cron EXPR` for each (the config's `triggers.crons`). */
  crons?: string[];
  /** `--test-scheduled`: the edge answers `GET /__scheduled?cron=...` by running `scheduled`. */
  testScheduled?: boolean;
  /** Called with each line the worker or edge prints that the user should see. */
  print: (line: string) => void;
}

export interface RunningEdge {
  child: ChildProcess;
  addr: string;
  stop(): Promise<void>;
}

/** Starts `isola-edge dev` and resolves once it listens (rejects with its output if it exits first). */
/** The command line of `isola-edge dev` for these options. */
export function devEdgeArgs(o: Omit<DevEdgeOptions, "bin" | "print">): string[] {
  const args = ["--log-format", "json", "dev", o.entry, "--listen", o.listen];
  if (o.name) args.push("--name", o.name);
  for (const [k, v] of Object.entries(o.vars)) {
    if (typeof v === "string") args.push("--var", `${k}=${v}`);
    else args.push("--json-var", `${k}=${JSON.stringify(v)}`);
  }
  if (o.cpuMs !== undefined) args.push("--cpu-ms", String(o.cpuMs));
  if (o.memoryMb !== undefined) args.push("--memory-mb", String(o.memoryMb));
  for (const cron of o.crons ?? []) args.push("--cron", cron);
  if (o.testScheduled) args.push("--test-scheduled");
  return args;
}

/** The long flags `isola-edge dev --help` lists (an older binary lacks the newer ones). */
export function devEdgeFlags(bin: string): Set<string> {
  try {
    const help = execFileSync(bin, ["dev", "--help"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 15_000 });
    return new Set(help.match(/--[a-z][a-z0-9-]*/g) ?? []);
  } catch {
    return new Set();
  }
}

export function startDevEdge(o: DevEdgeOptions): Promise<RunningEdge> {
  const args = devEdgeArgs(o);
  const child = spawn(o.bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  return new Promise((resolve, reject) => {
    let ready = false;
    const early: string[] = [];
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    const stop = async (): Promise<void> => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 2000);
      await exited;
      clearTimeout(t);
    };
    createInterface({ input: child.stdout! }).on("line", (line) => {
      if (line.startsWith("isola-edge dev: serving")) return;
      o.print(line);
    });
    createInterface({ input: child.stderr! }).on("line", (line) => {
      let event: { level?: string; fields?: { message?: string; addr?: string; [k: string]: unknown } } | undefined;
      try {
        event = JSON.parse(line) as typeof event;
      } catch {
        event = undefined;
      }
      if (!event?.fields) {
        if (!ready) early.push(line);
        o.print(line);
        return;
      }
      const { message, ...rest } = event.fields;
      if (message === "listening" && event.fields.addr && !ready) {
        ready = true;
        resolve({ child, addr: String(event.fields.addr), stop });
        return;
      }
      const level = (event.level ?? "").toUpperCase();
      if (!ready) early.push(`${message ?? ""} ${JSON.stringify(rest)}`);
      if (level === "WARN" || level === "ERROR") o.print(`[edge ${level.toLowerCase()}] ${message ?? ""} ${Object.keys(rest).length ? JSON.stringify(rest) : ""}`);
    });
    child.once("error", (e) => reject(e));
    child.once("exit", (code, signal) => {
      if (!ready) reject(new Error(`isola-edge exited (${code ?? signal}) before listening:\n${early.join("\n")}`));
    });
  });
}
