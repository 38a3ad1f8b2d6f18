// `isola tail`: live events of a worker from every edge, over the control plane's WebSocket
// (`GET /v1/workers/{name}/tail`), printed as wrangler tail prints them.
import { formatWithOptions, parseArgs } from "node:util";
import WebSocket from "ws";
import { ApiError, type Credentials } from "./api.js";
import { ConfigError, type Config } from "./config.js";
import { UsageError } from "./errors.js";

type Values = Record<string, string | boolean | string[] | undefined>;

export const TAIL_HELP = `isola tail — live events of a worker, from every edge

Usage:
  isola tail [WORKER] [--format pretty|json] [--status ok|error|canceled]... [--method M]...
             [--header NAME:VALUE] [--ip IP]... [--search TEXT] [--sampling-rate R]
             [--version-id ID] [--env NAME]

Streams one event per invocation (request, cron, queue batch, RPC call) with its outcome,
console logs and uncaught exceptions until Ctrl-C. WORKER defaults to \`name\` in the
project's config (with --env NAME, that environment's worker).

  --format pretty|json  pretty: one line per event, then its logs (the default on a
                        terminal); json: each event as the server sent it, one JSON object
                        per line (the default when stdout is a pipe or file)
  --status S            only events whose outcome is ok, error (an exception or an exceeded
                        limit) or canceled; repeat for several
  --method M            only requests with this HTTP method; repeat for several
  --header NAME:VALUE   only requests with this header value
  --ip IP               only requests from this client address; repeat for several
  --search TEXT         only events whose logs or exceptions contain TEXT
  --sampling-rate R     keep this share of the events, more than 0 and at most 1
  --version-id ID       only events of this version (\`isola versions list\`)
  --env NAME            the config's [env.NAME] worker
  --config FILE, --cwd DIR  where the project's config is

Pretty lines:
  GET https://example.com/ - Ok @ 11/29/2026, 10:41:07 PM
    (log) hello { id: 7 }
  "*/5 * * * *" @ 11/29/2026, 10:45:00 PM - Ok
  Queue jobs (3 messages) - Exception Thrown @ 11/29/2026, 10:45:02 PM
    Error: boom          (exceptions and their stacks go to stderr)
  default.getUser - Ok @ 11/29/2026, 10:45:03 PM

Examples:
  isola tail
  isola tail my-worker --status error
  isola tail --method POST --method PUT --search "payment failed"
  isola tail --header user-agent:curl/8.5.0 --sampling-rate 0.1
  isola tail --format json | jq 'select(.outcome != "ok")'`;

/** The filters `isola tail` sends, as given on the command line. */
export interface TailFilters {
  status: string[];
  method: string[];
  header?: string;
  ip: string[];
  search?: string;
  samplingRate?: number;
  versionId?: string;
}

export interface TailArgs {
  /** The positional WORKER, if given. */
  worker?: string;
  format?: "pretty" | "json";
  filters: TailFilters;
  /** The common flags (--config, --cwd, --env), for loading the config. */
  values: Values;
}

const STATUSES = ["ok", "error", "canceled"];

function str(v: string | boolean | string[] | undefined): string | undefined {
  return typeof v === "string" ? v : undefined;
}

function list(v: string | boolean | string[] | undefined): string[] {
  return Array.isArray(v) ? v : [];
}

/** Parses and checks `isola tail`'s command line. */
export function parseTailArgs(args: string[]): TailArgs {
  let parsed: { values: Values; positionals: string[] };
  try {
    const r = parseArgs({
      args,
      options: {
        help: { type: "boolean", short: "h" },
        config: { type: "string", short: "c" },
        cwd: { type: "string" },
        env: { type: "string", short: "e" },
        format: { type: "string" },
        status: { type: "string", multiple: true },
        method: { type: "string", multiple: true },
        header: { type: "string" },
        ip: { type: "string", multiple: true },
        search: { type: "string" },
        "sampling-rate": { type: "string" },
        "version-id": { type: "string" },
      },
      allowPositionals: true,
      strict: true,
    });
    parsed = { values: r.values as Values, positionals: r.positionals };
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\nRun \`isola tail --help\` for usage.`);
  }
  const { values, positionals } = parsed;
  if (positionals.length > 1) throw new UsageError(`isola tail takes one worker name, got ${positionals.join(" ")}`);

  const format = str(values["format"]);
  if (format !== undefined && format !== "pretty" && format !== "json") {
    throw new UsageError(`--format ${format}: pick pretty or json`);
  }
  const status = list(values["status"]);
  for (const s of status) {
    if (!STATUSES.includes(s)) throw new UsageError(`--status ${s}: pick ok, error or canceled (repeat --status for several)`);
  }
  const method = list(values["method"]).map((m) => {
    if (!/^[A-Za-z]+$/.test(m)) throw new UsageError(`--method ${m}: expected an HTTP method such as GET or POST`);
    return m.toUpperCase();
  });
  const header = str(values["header"]);
  if (header !== undefined) {
    const i = header.indexOf(":");
    if (i <= 0) throw new UsageError(`--header ${header}: expected NAME:VALUE, e.g. --header user-agent:curl/8.5.0`);
  }
  const ip = list(values["ip"]);
  for (const a of ip) if (a.trim() === "") throw new UsageError("--ip needs an address");
  const rate = str(values["sampling-rate"]);
  let samplingRate: number | undefined;
  if (rate !== undefined) {
    samplingRate = Number(rate);
    if (rate.trim() === "" || !Number.isFinite(samplingRate) || samplingRate <= 0 || samplingRate > 1) {
      throw new UsageError(`--sampling-rate ${rate}: expected a number more than 0 and at most 1 (0.1 keeps one event in ten)`);
    }
  }
  const search = str(values["search"]);
  const versionId = str(values["version-id"]);
  if (versionId !== undefined && versionId.trim() === "") throw new UsageError("--version-id needs an id (`isola versions list`)");

  const filters: TailFilters = { status, method, ip };
  if (header !== undefined) filters.header = header;
  if (search !== undefined) filters.search = search;
  if (samplingRate !== undefined) filters.samplingRate = samplingRate;
  if (versionId !== undefined) filters.versionId = versionId;
  const out: TailArgs = { filters, values };
  if (positionals[0] !== undefined) out.worker = positionals[0];
  if (format !== undefined) out.format = format;
  return out;
}

/** The filters as the tail endpoint's query string (without `?`; empty when there are none). */
export function tailQuery(f: TailFilters): string {
  const q = new URLSearchParams();
  for (const s of f.status) q.append("status", s);
  for (const m of f.method) q.append("method", m);
  if (f.header !== undefined) q.append("header", f.header);
  for (const a of f.ip) q.append("client_ip", a);
  if (f.search !== undefined) q.append("search", f.search);
  if (f.samplingRate !== undefined) q.append("sampling_rate", String(f.samplingRate));
  if (f.versionId !== undefined) q.append("version", f.versionId);
  return q.toString();
}

/** The WebSocket URL of a worker's tail: the API URL with ws(s):, the path and the filters. */
export function tailUrl(api: string, worker: string, filters: TailFilters): string {
  const url = new URL(`${api.replace(/\/+$/, "")}/v1/workers/${encodeURIComponent(worker)}/tail`);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  url.search = tailQuery(filters);
  return url.toString();
}

/** One event as the tail endpoint sends it (wrangler tail's shape); every field is optional here. */
export interface TailEvent {
  outcome?: string;
  eventTimestamp?: number;
  scriptName?: string;
  entrypoint?: string;
  scriptVersion?: { id?: string };
  event?: {
    request?: { url?: string; method?: string; headers?: Record<string, string> };
    response?: { status?: number };
    cron?: string;
    scheduledTime?: number;
    queue?: string;
    batchSize?: number;
    rpcMethod?: string;
  } | null;
  logs?: { level?: string; message?: unknown; timestamp?: number }[];
  exceptions?: { name?: string; message?: string; stack?: string | null; timestamp?: number }[];
  cpuTime?: number;
  wallTime?: number;
  edge?: string;
  truncated?: boolean;
}

/** wrangler's words for an outcome. */
export function outcomeLabel(outcome: string | undefined): string {
  switch (outcome) {
    case "ok":
      return "Ok";
    case "canceled":
      return "Canceled";
    case "exceededCpu":
      return "Exceeded CPU Limit";
    case "exceededMemory":
      return "Exceeded Memory Limit";
    case "exceededWall":
      return "Exceeded Wall Time Limit";
    case "exceededResources":
      return "Exceeded Resources";
    case "exception":
      return "Exception Thrown";
    case "scriptNotFound":
      return "Script Not Found";
    case "responseStreamDisconnected":
      return "Response Stream Disconnected";
    case undefined:
    case "unknown":
      return "Unknown";
    default:
      return outcome;
  }
}

/** A line for stdout or stderr. */
export interface TailLine {
  stream: "out" | "err";
  text: string;
}

/** How a time prints: local time, as wrangler prints it. */
export type TimeFormat = (ms: number | undefined) => string;
export const localTime: TimeFormat = (ms) => (typeof ms === "number" ? new Date(ms).toLocaleString() : "(no time)");

/**
 * wrangler tail's pretty lines for one event: the event's line, `  (level) args…` per log
 * line (error and warn levels on stderr, as console prints them), and `  Name: message` plus
 * the stack per exception on stderr.
 */
export function prettyLines(m: TailEvent, time: TimeFormat = localTime): TailLine[] {
  const lines: TailLine[] = [];
  const outcome = outcomeLabel(m.outcome);
  const e = m.event ?? undefined;
  let head: string;
  if (e && typeof e.cron === "string") {
    head = `"${e.cron}" @ ${time(e.scheduledTime ?? m.eventTimestamp)} - ${outcome}`;
  } else if (e && e.request) {
    const url = e.request.url;
    head = url
      ? `${(e.request.method ?? "GET").toUpperCase()} ${url} - ${outcome} @ ${time(m.eventTimestamp)}`
      : `[missing request] - ${outcome} @ ${time(m.eventTimestamp)}`;
  } else if (e && typeof e.queue === "string") {
    const n = e.batchSize ?? 0;
    head = `Queue ${e.queue} (${n} message${n === 1 ? "" : "s"}) - ${outcome} @ ${time(m.eventTimestamp)}`;
  } else if (e && typeof e.rpcMethod === "string") {
    head = `${m.entrypoint ?? "default"}.${e.rpcMethod} - ${outcome} @ ${time(m.eventTimestamp)}`;
  } else {
    head = `Unknown Event - ${outcome} @ ${time(m.eventTimestamp)}`;
  }
  lines.push({ stream: "out", text: head });
  for (const log of m.logs ?? []) {
    const level = log.level ?? "log";
    const args = Array.isArray(log.message) ? (log.message as unknown[]) : [log.message];
    // Formatted as console.log formats its arguments (strings as they are, the rest inspected).
    const text = formatWithOptions({ colors: false }, `  (${level})`, ...args);
    lines.push({ stream: level === "error" || level === "warn" ? "err" : "out", text });
  }
  if (m.truncated) lines.push({ stream: "out", text: "  (logs past 128 KB were left out)" });
  for (const x of m.exceptions ?? []) {
    const first = `${x.name ?? "Error"}: ${x.message ?? ""}`;
    let text = `  ${first}`;
    if (x.stack) {
      // A V8 stack starts with `Name: message` itself; print that once.
      const stack = x.stack.startsWith(first) ? x.stack.slice(first.length).replace(/^\n/, "") : x.stack;
      if (stack) text += `\n${stack}`;
    }
    lines.push({ stream: "err", text });
  }
  return lines;
}

export interface TailIo {
  out(s: string): void;
  err(s: string): void;
}

/** What `runTail` needs: where to connect, how to print, and when to stop. */
export interface TailRun {
  creds: Credentials;
  worker: string;
  filters: TailFilters;
  format: "pretty" | "json";
  io: TailIo;
  /** Aborting it closes the tail cleanly (Ctrl-C). */
  signal: AbortSignal;
  time?: TimeFormat;
}

/** An ApiError for a refused upgrade, with what to do about it. */
export function upgradeError(status: number, body: string, worker: string, api: string): ApiError {
  let code = "http_error";
  let message = body.slice(0, 500) || `HTTP ${status}`;
  try {
    const parsed = JSON.parse(body) as { error?: { code?: string; message?: string } };
    if (parsed.error?.code) code = parsed.error.code;
    if (parsed.error?.message) message = parsed.error.message;
  } catch {
    // not JSON: keep the text
  }
  const e = new ApiError(status, code, `cannot open the tail of ${worker}: ${message}`);
  if (status === 405 || (status === 404 && (/no endpoint/i.test(message) || code === "http_error"))) {
    e.hint = `the control plane at ${api} has no tail endpoint (GET /v1/workers/{name}/tail); update isola-control to a version with live tail`;
  } else if (status === 404) {
    e.hint = `check the worker's name (\`isola tail WORKER\`, or \`name\` in isola.toml) and the API URL; \`isola whoami\` lists the workers`;
  } else if (status === 400) {
    e.hint = "the server refused a filter; check the flags (`isola tail --help`)";
  }
  return e;
}

/**
 * Opens the tail and prints its events until the signal aborts (exit status 0) or the server
 * closes it (0 after a normal close, 1 otherwise, with the server's reason on stderr).
 * A refused upgrade or an unreachable server rejects with an ApiError.
 */
export function runTail(run: TailRun): Promise<number> {
  const { creds, worker, format, io } = run;
  const url = tailUrl(creds.api, worker, run.filters);
  return new Promise<number>((resolve, reject) => {
    if (run.signal.aborted) return resolve(0);
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${creds.token}` }, handshakeTimeout: 30_000 });
    let opened = false;
    let closing = false;
    let settled = false;
    let forceTimer: NodeJS.Timeout | undefined;
    const finish = (f: () => void): void => {
      if (settled) return;
      settled = true;
      run.signal.removeEventListener("abort", onAbort);
      if (forceTimer) clearTimeout(forceTimer);
      f();
    };
    const onAbort = (): void => {
      if (!opened) {
        closing = true;
        ws.terminate();
        return finish(() => resolve(0));
      }
      if (closing) {
        ws.terminate();
        return;
      }
      closing = true;
      ws.close(1000, "client closed the tail");
      // A server that does not answer the close frame does not keep us waiting.
      forceTimer = setTimeout(() => ws.terminate(), 2000);
      forceTimer.unref();
    };
    run.signal.addEventListener("abort", onAbort);

    ws.on("unexpected-response", (_req, res) => {
      const chunks: Buffer[] = [];
      res.on("data", (d: Buffer) => chunks.push(d));
      res.on("end", () => {
        ws.terminate();
        finish(() => reject(upgradeError(res.statusCode ?? 0, Buffer.concat(chunks).toString("utf8"), worker, creds.api)));
      });
      res.on("error", () => finish(() => reject(upgradeError(res.statusCode ?? 0, "", worker, creds.api))));
    });
    ws.on("error", (e: Error & { code?: string }) => {
      if (opened || closing) return; // the close event follows and says what happened
      finish(() =>
        reject(
          new ApiError(
            0,
            "unreachable",
            `cannot open the tail at ${url} (${e.code ?? e.message}); check the API URL (\`isola login --api URL\` or ISOLA_API_URL)`,
          ),
        ),
      );
    });
    ws.on("open", () => {
      opened = true;
      if (format === "pretty") io.err(`Connected to ${worker}, waiting for events… (Ctrl-C to stop)`);
    });
    ws.on("message", (data: WebSocket.RawData) => {
      const text = rawText(data);
      let event: TailEvent;
      try {
        event = JSON.parse(text) as TailEvent;
      } catch {
        io.err(`warning: the server sent a message that is not JSON: ${text.slice(0, 200)}`);
        return;
      }
      if (format === "json") {
        // Unchanged, one per line: re-serialized only if the server spread it over lines.
        io.out(/[\r\n]/.test(text) ? JSON.stringify(event) : text);
        return;
      }
      if (typeof event !== "object" || event === null) {
        io.err(`warning: the server sent a message that is not an event: ${text.slice(0, 200)}`);
        return;
      }
      for (const line of prettyLines(event, run.time)) (line.stream === "out" ? io.out : io.err)(line.text);
    });
    ws.on("close", (code: number, reasonBuf: Buffer) => {
      if (!opened) return; // error or unexpected-response settle it
      if (closing) {
        if (format === "pretty") io.err("Tail closed.");
        return finish(() => resolve(0));
      }
      const reason = reasonBuf.toString("utf8");
      if (code === 1006) {
        io.err(`✘ the connection to ${creds.api} was lost (no close frame); run \`isola tail\` again`);
      } else {
        io.err(`${code === 1000 ? "" : "✘ "}the server closed the tail: ${reason || "no reason given"} (code ${code})`);
      }
      finish(() => resolve(code === 1000 ? 0 : 1));
    });
  });
}

function rawText(data: WebSocket.RawData): string {
  if (Array.isArray(data)) return Buffer.concat(data).toString("utf8");
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString("utf8");
  return data.toString("utf8");
}

export interface TailDeps {
  /** Loads the project's config (--config, --cwd, --env in `values`), printing its warnings. */
  projectConfig(values: Values): Config;
  creds(): Credentials;
  io: TailIo;
  /** Whether stdout is a terminal (pretty by default, else json). */
  isTTY: boolean;
  signal: AbortSignal;
}

/** `isola tail ...`; resolves with the exit status. */
export async function cmdTail(args: string[], deps: TailDeps): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    deps.io.out(TAIL_HELP);
    return 0;
  }
  const parsed = parseTailArgs(args);
  let worker = parsed.worker;
  if (worker === undefined) {
    let config: Config;
    try {
      config = deps.projectConfig(parsed.values);
    } catch (e) {
      if (e instanceof ConfigError && e.message.startsWith("no isola.toml")) {
        throw new ConfigError(`${e.message}, or name the worker: \`isola tail WORKER\``);
      }
      throw e;
    }
    if (!config.name) throw new UsageError(`${config.file} has no \`name\`; set it, or name the worker: \`isola tail WORKER\``);
    worker = config.name;
  }
  const creds = deps.creds();
  return runTail({
    creds,
    worker,
    filters: parsed.filters,
    format: parsed.format ?? (deps.isTTY ? "pretty" : "json"),
    io: deps.io,
    signal: deps.signal,
  });
}
