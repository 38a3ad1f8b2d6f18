// Credentials and the control plane's REST API.
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";

export interface Credentials {
  api: string;
  token: string;
}

export function credentialsPath(): string {
  const base = process.env["XDG_CONFIG_HOME"] || join(homedir(), ".config");
  return join(base, "isola", "credentials.json");
}

export function saveCredentials(c: Credentials): string {
  const path = credentialsPath();
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, JSON.stringify({ api: c.api, token: c.token }, null, 2) + "\n", { mode: 0o600 });
  chmodSync(path, 0o600);
  return path;
}

export function deleteCredentials(): boolean {
  const path = credentialsPath();
  if (!existsSync(path)) return false;
  rmSync(path);
  return true;
}

/** Stored credentials overridden by ISOLA_API_URL / ISOLA_API_TOKEN. */
export function loadCredentials(): { creds?: Credentials; source: string } {
  let stored: Partial<Credentials> = {};
  const path = credentialsPath();
  if (existsSync(path)) {
    try {
      stored = JSON.parse(readFileSync(path, "utf8")) as Partial<Credentials>;
    } catch {
      throw new ApiError(0, "bad_credentials", `${path} is not valid JSON; run \`isola login\` again`);
    }
  }
  const api = process.env["ISOLA_API_URL"] || stored.api;
  const token = process.env["ISOLA_API_TOKEN"] || stored.token;
  const source = process.env["ISOLA_API_URL"] || process.env["ISOLA_API_TOKEN"] ? "environment" : path;
  if (!api || !token) return { source };
  return { creds: { api: api.replace(/\/+$/, ""), token }, source };
}

export class ApiError extends Error {
  override name = "ApiError";
  /** What to do about it, when the caller knows better than the status does. */
  hint?: string;
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }

  /** `code: message (HTTP status)` and a hint. */
  describe(): string {
    let text = `${this.code}: ${this.message}${this.status ? ` (HTTP ${this.status})` : ""}`;
    if (this.hint) {
      text += `\nhint: ${this.hint}`;
    } else if (this.status === 401) {
      text += "\nhint: the token was refused; run `isola login --api URL` with a valid token, or set ISOLA_API_TOKEN";
    } else if (this.status === 404) {
      text += "\nhint: check the worker name (`name` in isola.toml) and the API URL (`isola whoami`); deploy the worker first if it is new";
    }
    return text;
  }
}

export function requireCredentials(): Credentials {
  const { creds } = loadCredentials();
  if (!creds) {
    throw new ApiError(
      0,
      "not_logged_in",
      "no API credentials; run `isola login --api URL --token TOKEN` or set ISOLA_API_URL and ISOLA_API_TOKEN",
    );
  }
  return creds;
}

export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

export interface DeployedVersion {
  id: string;
  percentage: number;
  hash: string;
}
export interface Deployment {
  id: number;
  worker: string;
  versions: DeployedVersion[];
  created_at: Json;
  rolled_back: boolean;
  active: boolean;
  revision?: number;
}
export interface ModuleRef {
  name: string;
  sha256: string;
  size: number;
}
export interface VersionInfo {
  id: string;
  hash: string;
  worker: string;
  created_at: Json;
  main_module: string;
  modules: ModuleRef[];
  /** What the uploader said about the version (`--message`). */
  message: string | null;
}
/** One version in full (GET /v1/workers/{name}/versions/{id}). */
export interface VersionDetail extends VersionInfo {
  /** The vars' names; their values stay out of the API's answers. */
  vars: string[];
  limits: Record<string, number>;
  compatibility_date: string | null;
}
export interface WorkerInfo {
  name: string;
  created_at: Json;
  active_deployment: Deployment | null;
}
export interface RouteInfo {
  pattern: string;
  worker: string;
  created_at?: Json;
  revision?: number;
}
export interface SecretInfo {
  key: string;
  updated_at: Json;
}

export interface KvNamespace {
  id: string;
  title: string;
  created_at: Json;
}
export interface KvKey {
  name: string;
  expiration?: number;
  metadata?: Json;
}
export interface KvKeyPage {
  keys: KvKey[];
  list_complete: boolean;
  cursor?: string;
}
/** One pair of a bulk write, Cloudflare's shape. */
export interface KvBulkPair {
  key: string;
  value: string;
  base64?: boolean;
  expiration?: number;
  expiration_ttl?: number;
  metadata?: Json;
}

/** A queue's consumer as the server stores it (unset fields filled with the defaults). */
export interface ConsumerSettings {
  worker: string;
  max_batch_size: number;
  /** Seconds. */
  max_batch_timeout: number;
  max_retries: number;
  dead_letter_queue: string | null;
  /** Seconds. */
  retry_delay: number;
}
/** What PUT /v1/queues/{name}/consumer takes: the worker, and any settings to change from the defaults. */
export interface ConsumerRequest {
  worker: string;
  max_batch_size?: number;
  max_batch_timeout?: number;
  max_retries?: number;
  dead_letter_queue?: string;
  retry_delay?: number;
}
/** A queue and its counts (GET /v1/queues/{name}). */
export interface QueueInfo {
  name: string;
  created_at: Json;
  consumer: ConsumerSettings | null;
  backlog: number;
  delayed: number;
  in_flight: number;
  delivered: number;
  retried: number;
  dead_lettered: number;
  dropped: number;
}
/** One message sent from outside the platform: `body` is any JSON (json), a string (text) or base64 (bytes). */
export interface OutsideMessage {
  body: Json;
  content_type?: "json" | "text" | "bytes";
  delay_seconds?: number;
}

export interface Metadata {
  main_module: string;
  vars: Record<string, Json>;
  limits: { cpu_ms?: number; memory_mb?: number; subrequests?: number };
  compatibility_date?: string;
  /** Service bindings, wrangler's keys; left out when there are none. */
  services?: { binding: string; service: string; entrypoint?: string }[];
  /** KV bindings: `env.BINDING` is the namespace `id`; left out when there are none. */
  kv_namespaces?: { binding: string; id: string }[];
  /** Queue producer bindings: `env.BINDING.send()` writes to `queue`; left out when there are none. */
  queues?: { producers: { binding: string; queue: string }[] };
  /** Stored with the version, outside its manifest (at most 1,000 characters). */
  message?: string;
}

export interface UploadModule {
  name: string;
  contentType: string;
  bytes: Uint8Array;
}

export class Client {
  constructor(readonly creds: Credentials) {}

  /** Sends a request; a non-2xx answer becomes an ApiError with the server's code and message. */
  async send(
    method: string,
    path: string,
    opts: { body?: string | FormData | Uint8Array; headers?: Record<string, string>; timeoutMs?: number } = {},
  ): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.creds.token}`, ...opts.headers };
    let res: Response;
    try {
      res = await fetch(this.creds.api + path, {
        method,
        headers,
        body: opts.body ?? null,
        signal: AbortSignal.timeout(opts.timeoutMs ?? 60_000),
      });
    } catch (e) {
      const cause = (e as { cause?: { code?: string; message?: string } }).cause;
      throw new ApiError(
        0,
        "unreachable",
        `cannot reach ${this.creds.api} (${cause?.code ?? cause?.message ?? String(e)}); check the API URL (\`isola login --api URL\` or ISOLA_API_URL)`,
      );
    }
    if (!res.ok) {
      const text = await res.text();
      let code = "http_error";
      let message = text.slice(0, 500) || res.statusText;
      try {
        const parsed = JSON.parse(text) as { error?: { code?: string; message?: string } };
        if (parsed.error?.code) code = parsed.error.code;
        if (parsed.error?.message) message = parsed.error.message;
      } catch {
        // not JSON: keep the text
      }
      throw new ApiError(res.status, code, message);
    }
    return res;
  }

  async request<T>(method: string, path: string, body?: Json | FormData): Promise<T> {
    let res: Response;
    if (body instanceof FormData) res = await this.send(method, path, { body });
    else if (body !== undefined) res = await this.send(method, path, { body: JSON.stringify(body), headers: { "content-type": "application/json" } });
    else res = await this.send(method, path);
    const text = await res.text();
    return (text ? JSON.parse(text) : null) as T;
  }

  async workers(): Promise<WorkerInfo[]> {
    return (await this.request<{ workers: WorkerInfo[] }>("GET", "/v1/workers")).workers;
  }

  async versions(worker: string): Promise<VersionInfo[]> {
    return (await this.request<{ versions: VersionInfo[] }>("GET", `/v1/workers/${enc(worker)}/versions`)).versions;
  }

  async version(worker: string, id: string): Promise<VersionDetail> {
    return this.request<VersionDetail>("GET", `/v1/workers/${enc(worker)}/versions/${enc(id)}`);
  }

  async upload(worker: string, metadata: Metadata, modules: UploadModule[]): Promise<VersionInfo> {
    const form = new FormData();
    form.append("metadata", new Blob([JSON.stringify(metadata)], { type: "application/json" }), "metadata");
    for (const m of modules) form.append(m.name, new Blob([m.bytes], { type: m.contentType }), m.name);
    return this.request<VersionInfo>("POST", `/v1/workers/${enc(worker)}/versions`, form);
  }

  async deploy(worker: string, versions: { id: string; percentage: number }[]): Promise<Deployment> {
    return this.request<Deployment>("POST", `/v1/workers/${enc(worker)}/deployments`, { versions });
  }

  async deployments(worker: string): Promise<Deployment[]> {
    return (await this.request<{ deployments: Deployment[] }>("GET", `/v1/workers/${enc(worker)}/deployments`)).deployments;
  }

  async rollback(worker: string): Promise<Deployment> {
    return this.request<Deployment>("POST", `/v1/workers/${enc(worker)}/rollback`);
  }

  async routes(): Promise<RouteInfo[]> {
    return (await this.request<{ routes: RouteInfo[] }>("GET", "/v1/routes")).routes;
  }

  /** Adds a route; an identical existing one is fine (returns it). */
  async ensureRoute(pattern: string, worker: string): Promise<RouteInfo & { existed: boolean }> {
    try {
      const r = await this.request<RouteInfo>("POST", "/v1/routes", { pattern, worker });
      return { ...r, existed: false };
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) {
        const same = (await this.routes()).find((r) => r.pattern === pattern && r.worker === worker);
        if (same) return { ...same, existed: true };
      }
      throw e;
    }
  }

  /** Replaces the worker's cron schedules (an empty list clears them). */
  async putSchedules(worker: string, crons: string[]): Promise<{ crons: string[] }> {
    return this.request<{ crons: string[] }>("PUT", `/v1/workers/${enc(worker)}/schedules`, { crons });
  }

  async putSecret(worker: string, key: string, value: string): Promise<{ key: string; revision: number }> {
    return this.request("PUT", `/v1/workers/${enc(worker)}/secrets/${enc(key)}`, { value });
  }

  /** Sets all of `secrets` in one change, or none of them. */
  async putSecrets(worker: string, secrets: Record<string, string>): Promise<{ keys: string[]; revision: number }> {
    return this.request("PUT", `/v1/workers/${enc(worker)}/secrets`, secrets);
  }

  async deleteSecret(worker: string, key: string): Promise<void> {
    await this.request<null>("DELETE", `/v1/workers/${enc(worker)}/secrets/${enc(key)}`);
  }

  async secrets(worker: string): Promise<SecretInfo[]> {
    return (await this.request<{ secrets: SecretInfo[] }>("GET", `/v1/workers/${enc(worker)}/secrets`)).secrets;
  }

  async kvNamespaces(): Promise<KvNamespace[]> {
    return (await this.request<{ namespaces: KvNamespace[] }>("GET", "/v1/kv/namespaces")).namespaces;
  }

  async createKvNamespace(title: string): Promise<KvNamespace> {
    return this.request<KvNamespace>("POST", "/v1/kv/namespaces", { title });
  }

  async deleteKvNamespace(id: string): Promise<void> {
    await this.send("DELETE", `/v1/kv/namespaces/${enc(id)}`);
  }

  async kvPut(id: string, key: string, value: Uint8Array, opts: { expiration?: number; expirationTtl?: number; metadata?: string } = {}): Promise<void> {
    const q = new URLSearchParams();
    if (opts.expiration !== undefined) q.set("expiration", String(opts.expiration));
    if (opts.expirationTtl !== undefined) q.set("expiration_ttl", String(opts.expirationTtl));
    const headers: Record<string, string> = { "content-type": "application/octet-stream" };
    if (opts.metadata !== undefined) headers[KV_METADATA_HEADER] = opts.metadata;
    const query = q.toString() ? `?${q.toString()}` : "";
    await this.send("PUT", `${kvValuePath(id, key)}${query}`, { body: value, headers, timeoutMs: 300_000 });
  }

  /** The value's bytes, its metadata (JSON text) and expiry; undefined when the key is not there. */
  async kvGet(id: string, key: string): Promise<{ value: Uint8Array; metadata?: string; expiration?: number } | undefined> {
    let res: Response;
    try {
      res = await this.send("GET", kvValuePath(id, key), { timeoutMs: 300_000 });
    } catch (e) {
      // A missing key is a 404 about the key; a missing namespace is one about the namespace.
      if (e instanceof ApiError && e.status === 404 && /no key/.test(e.message)) return undefined;
      throw e;
    }
    const value = new Uint8Array(await res.arrayBuffer());
    const metadata = res.headers.get(KV_METADATA_HEADER) ?? undefined;
    const exp = res.headers.get("isola-kv-expiration");
    return { value, ...(metadata !== undefined ? { metadata } : {}), ...(exp ? { expiration: Number(exp) } : {}) };
  }

  async kvDelete(id: string, key: string): Promise<void> {
    await this.send("DELETE", kvValuePath(id, key));
  }

  async kvKeys(id: string, opts: { prefix?: string; limit?: number; cursor?: string } = {}): Promise<KvKeyPage> {
    const q = new URLSearchParams();
    if (opts.prefix !== undefined) q.set("prefix", opts.prefix);
    if (opts.limit !== undefined) q.set("limit", String(opts.limit));
    if (opts.cursor !== undefined) q.set("cursor", opts.cursor);
    const query = q.toString() ? `?${q.toString()}` : "";
    return this.request<KvKeyPage>("GET", `/v1/kv/namespaces/${enc(id)}/keys${query}`);
  }

  async kvBulkPut(id: string, pairs: KvBulkPair[]): Promise<{ count: number }> {
    const res = await this.send("PUT", `/v1/kv/namespaces/${enc(id)}/bulk`, {
      body: JSON.stringify(pairs),
      headers: { "content-type": "application/json" },
      timeoutMs: 600_000,
    });
    return (await res.json()) as { count: number };
  }

  async kvBulkDelete(id: string, keys: string[]): Promise<{ count: number }> {
    return this.request<{ count: number }>("POST", `/v1/kv/namespaces/${enc(id)}/bulk/delete`, keys);
  }

  async queues(): Promise<QueueInfo[]> {
    return (await this.request<{ queues: QueueInfo[] }>("GET", "/v1/queues")).queues;
  }

  async queue(name: string): Promise<QueueInfo> {
    return this.request<QueueInfo>("GET", `/v1/queues/${enc(name)}`);
  }

  async createQueue(name: string): Promise<QueueInfo> {
    return this.request<QueueInfo>("POST", "/v1/queues", { name });
  }

  async deleteQueue(name: string): Promise<void> {
    await this.send("DELETE", `/v1/queues/${enc(name)}`);
  }

  /** Sets the queue's consumer (replacing any other). */
  async putConsumer(queue: string, consumer: ConsumerRequest): Promise<ConsumerSettings> {
    return this.request<ConsumerSettings>("PUT", `/v1/queues/${enc(queue)}/consumer`, { ...consumer });
  }

  async deleteConsumer(queue: string): Promise<void> {
    await this.send("DELETE", `/v1/queues/${enc(queue)}/consumer`);
  }

  /** Stores one message durably; returns its id. */
  async sendMessage(queue: string, message: OutsideMessage): Promise<{ ids: string[] }> {
    return this.request<{ ids: string[] }>("POST", `/v1/queues/${enc(queue)}/messages`, { ...message });
  }

  /** Stores up to 100 messages (256 KB), all or none. */
  async sendBatch(queue: string, messages: OutsideMessage[]): Promise<{ ids: string[] }> {
    return this.request<{ ids: string[] }>("POST", `/v1/queues/${enc(queue)}/messages/batch`, { messages: messages.map((m) => ({ ...m })) });
  }
}

/** The header a KV value's metadata (JSON) travels in. */
export const KV_METADATA_HEADER = "isola-kv-metadata";

function kvValuePath(id: string, key: string): string {
  return `/v1/kv/namespaces/${enc(id)}/values/${enc(key)}`;
}

function enc(s: string): string {
  return encodeURIComponent(s);
}
