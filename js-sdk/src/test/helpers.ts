// Shared by the tests: temp folders, files, free ports, child processes.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const PKG_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const CLI = join(PKG_DIR, "dist", "cli.js");

export function tempDir(prefix = "isola-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function write(dir: string, name: string, text: string): string {
  const p = join(dir, name);
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, text);
  return p;
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => res(port));
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A child process whose output is collected; `stop()` kills it (and its group). */
export class Proc {
  readonly child: ChildProcess;
  output = "";
  private waiters: (() => void)[] = [];
  exited: number | null = null;

  constructor(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
    this.child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ["ignore", "pipe", "pipe"], detached: true });
    const on = (d: Buffer): void => {
      this.output += d.toString();
      for (const w of this.waiters.splice(0)) w();
    };
    this.child.stdout?.on("data", on);
    this.child.stderr?.on("data", on);
    this.child.on("exit", (code) => {
      this.exited = code ?? -1;
      for (const w of this.waiters.splice(0)) w();
    });
    live.add(this);
  }

  /** Waits until the output (from `from`) matches; returns the match. */
  async waitFor(re: RegExp, timeoutMs = 30_000, from = 0): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.output.slice(from));
      if (m) return m;
      if (this.exited !== null) throw new Error(`process exited (${this.exited}) before ${re}; output:\n${this.output}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${re}; output:\n${this.output}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 500));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async stop(): Promise<void> {
    live.delete(this);
    if (this.exited !== null || this.child.pid === undefined) return;
    const done = new Promise<void>((r) => this.child.once("exit", () => r()));
    try {
      process.kill(-this.child.pid, "SIGTERM");
    } catch {
      return;
    }
    const t = setTimeout(() => {
      try {
        process.kill(-this.child.pid!, "SIGKILL");
      } catch {
        // gone
      }
    }, 3000);
    await done;
    clearTimeout(t);
  }
}

const live = new Set<Proc>();
process.on("exit", () => {
  for (const p of live) {
    try {
      if (p.child.pid) process.kill(-p.child.pid, "SIGKILL");
    } catch {
      // gone
    }
  }
});

/** Runs the CLI to its end; `stdoutBytes` is stdout as it came (for binary output). */
export async function runCli(
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string | Uint8Array; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string; stdoutBytes: Buffer }> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const errs: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => errs.push(d));
    const t = setTimeout(() => {
      child.kill("SIGKILL");
      rej(new Error(`isola ${args.join(" ")} timed out; stdout:\n${Buffer.concat(out).toString()}\nstderr:\n${Buffer.concat(errs).toString()}`));
    }, opts.timeoutMs ?? 60_000);
    child.on("close", (code) => {
      clearTimeout(t);
      const stdoutBytes = Buffer.concat(out);
      res({ code: code ?? -1, stdout: stdoutBytes.toString("utf8"), stderr: Buffer.concat(errs).toString("utf8"), stdoutBytes });
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(opts.input ?? "");
  });
}

/** GET with a Host header via node:http (fetch does not allow setting Host). */
export async function get(port: number, path = "/", host?: string): Promise<{ status: number; body: string } | undefined> {
  const http = await import("node:http");
  return new Promise((res) => {
    const req = http.request(
      { host: "127.0.0.1", port, path, method: "GET", headers: host ? { host } : {}, agent: false, timeout: 5000 },
      (r) => {
        let body = "";
        r.on("data", (d: Buffer) => (body += d.toString()));
        r.on("end", () => res({ status: r.statusCode ?? 0, body }));
        r.on("error", () => res(undefined));
      },
    );
    req.on("error", () => res(undefined));
    req.on("timeout", () => req.destroy());
    req.end();
  });
}

/** Polls `probe` every 50 ms until it returns a value, up to `ms`. */
export async function poll<T>(ms: number, probe: () => Promise<T | undefined>): Promise<T | undefined> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) return undefined;
    await sleep(50);
  }
}

/** `script` (util-linux) runs a command on a pseudo-terminal; undefined where it is missing. */
export function scriptBinary(): string | undefined {
  for (const dir of (process.env["PATH"] ?? "/usr/bin:/bin").split(":")) {
    const p = join(dir, "script");
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Runs the CLI with stdin, stdout and stderr on a pseudo-terminal (`script -qfec`), so
 * `isTTY` is true in it. `output` is everything the terminal showed (stdout and stderr
 * together, with the terminal's \r\n). `converse`, if given, gets the live output and a
 * way to type into the terminal, and resolves when it is done typing.
 */
export async function runCliInTty(
  args: string[],
  opts: {
    cwd?: string;
    env?: NodeJS.ProcessEnv;
    timeoutMs?: number;
    converse?: (io: { waitFor(re: RegExp): Promise<void>; type(text: string): void }) => Promise<void>;
  } = {},
): Promise<{ code: number; output: string }> {
  const script = scriptBinary();
  if (!script) throw new Error("no `script` binary (util-linux)");
  const cmd = [process.execPath, CLI, ...args].map(shellQuote).join(" ");
  const child = spawn(script, ["-qfec", cmd, "/dev/null"], {
    cwd: opts.cwd,
    env: { ...(opts.env ?? process.env), SHELL: "/bin/sh" },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let output = "";
  const waiters: (() => void)[] = [];
  const on = (d: Buffer): void => {
    output += d.toString();
    for (const w of waiters.splice(0)) w();
  };
  child.stdout.on("data", on);
  child.stderr.on("data", on);
  const exited = new Promise<number>((res) => child.on("exit", (code) => res(code ?? -1)));
  const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 60_000);
  try {
    if (opts.converse) {
      let gone = false;
      void exited.then(() => {
        gone = true;
        for (const w of waiters.splice(0)) w();
      });
      await opts.converse({
        waitFor: async (re) => {
          while (!re.test(output)) {
            if (gone) throw new Error(`exited before ${re}; output:\n${output}`);
            await new Promise<void>((r) => waiters.push(r));
          }
        },
        type: (text) => void child.stdin.write(text),
      });
    }
    const code = await exited;
    return { code, output };
  } finally {
    clearTimeout(timer);
    child.stdin.destroy();
  }
}
