// The public REST API, typed as the page uses it. Nothing here is private to the dashboard:
// every call is one a CLI or script can make with the same token.

export interface WhoAmI {
  account: string;
  admin: boolean;
}

export interface DeployedVersion {
  id: string;
  percentage: number;
  hash: string;
}

export interface Deployment {
  id: number;
  worker: string;
  versions: DeployedVersion[];
  created_at: string;
  rolled_back: boolean;
  active: boolean;
}

export interface WorkerInfo {
  name: string;
  created_at: string;
  active_deployment: Deployment | null;
}

export interface VersionInfo {
  id: string;
  hash: string;
  worker: string;
  created_at: string;
  main_module: string;
  message: string | null;
}

export interface Quantiles {
  p50: number | null;
  p99: number | null;
}

export interface Counts {
  requests: number;
  errors: number;
  errors_by_outcome: Record<string, number>;
  subrequests: number;
  egress_bytes: number;
  events: number;
  cpu_ms: Quantiles;
  wall_ms: Quantiles;
}

export interface VersionCounts extends Counts {
  version: string;
}

export interface Bucket extends Counts {
  start: string;
  by_version: VersionCounts[];
}

export interface Analytics {
  worker: string;
  since: string;
  until: string;
  step: number;
  quantile_relative_error: number;
  buckets: Bucket[];
}

export interface TailLog {
  level: string;
  message: string[];
  timestamp: number;
}

export interface TailException {
  name: string;
  message: string;
  stack: string | null;
  timestamp: number;
}

export interface TailEvent {
  request?: { url: string; method: string; headers: Record<string, string> };
  response?: { status: number };
  cron?: string;
  scheduledTime?: number;
  queue?: string;
  batchSize?: number;
  rpcMethod?: string;
}

export interface TailMessage {
  outcome: string;
  eventTimestamp: number;
  scriptName: string;
  scriptVersion: { id: string };
  event: TailEvent;
  logs: TailLog[];
  exceptions: TailException[];
  cpuTime: number;
  wallTime: number;
  edge: string;
  truncated: boolean;
}

export interface LogPage {
  logs: TailMessage[];
  cursor?: string;
}

export interface ScheduleRun {
  id: number;
  cron: string;
  scheduled_time: string;
  attempt: number;
  edge: string | null;
  outcome: string;
  started_at: string;
  version: string | null;
  duration_ms: number;
  cpu_ms: number;
}

export interface QueueInfo {
  name: string;
  created_at: string;
  consumer: { worker: string; max_batch_size: number; max_retries: number } | null;
  backlog: number;
  delayed: number;
  in_flight: number;
  delivered: number;
  retried: number;
  dead_lettered: number;
}

export interface KvNamespace {
  id: string;
  title: string;
  created_at: string;
}

export interface UsageView {
  worker: string;
  requests: number;
  errors: number;
  cpu_ms: number;
  wall_ms: number;
  egress_bytes: number;
  subrequests: number;
  kv_reads: number;
  kv_writes: number;
  kv_deletes: number;
  kv_lists: number;
  queue_operations: number;
}

export interface InvoiceLine {
  worker: string | null;
  item: string;
  quantity: string;
  unit_price: string;
  amount: string;
}

export interface Invoice {
  account: string;
  month: string;
  currency: string;
  lines: InvoiceLine[];
  total: string;
  amount_due: string;
  closed: boolean;
}

/** An edge as `GET /v1/edges` lists it; fields beyond the first ones are shown when present. */
export interface EdgeInfo {
  name: string;
  enrolled_at: string;
  revision: number | null;
  last_seen: string | null;
  errors: string[];
  [field: string]: unknown;
}

export interface EdgeList {
  revision: number;
  edges: EdgeInfo[];
}

/** An error answer (`{"error": {"code", "message"}}`), or a failure to reach the API. */
export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

interface ErrorBody {
  error?: { code?: string; message?: string; request_id?: string };
}

export class Api {
  constructor(readonly token: string) {}

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    let res: Response;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiFailure(0, "unreachable", `the control plane did not answer: ${String(e)}`);
    }
    if (!res.ok) {
      const err = ((await res.json().catch(() => ({}))) as ErrorBody).error;
      const id = err?.request_id ? ` (request id ${err.request_id})` : "";
      throw new ApiFailure(res.status, err?.code ?? "error", `${err?.message ?? res.statusText}${id}`);
    }
    if (res.status === 204) return undefined as T;
    return (await res.json()) as T;
  }

  get<T>(path: string): Promise<T> {
    return this.call<T>("GET", path);
  }

  whoami(): Promise<WhoAmI> {
    return this.get("/v1/whoami");
  }

  async workers(): Promise<WorkerInfo[]> {
    return (await this.get<{ workers: WorkerInfo[] }>("/v1/workers")).workers;
  }

  async versions(worker: string): Promise<VersionInfo[]> {
    return (await this.get<{ versions: VersionInfo[] }>(`/v1/workers/${enc(worker)}/versions`)).versions;
  }

  async deployments(worker: string): Promise<Deployment[]> {
    return (await this.get<{ deployments: Deployment[] }>(`/v1/workers/${enc(worker)}/deployments`)).deployments;
  }

  deploy(worker: string, versions: { id: string; percentage: number }[]): Promise<Deployment> {
    return this.call("POST", `/v1/workers/${enc(worker)}/deployments`, { versions });
  }

  rollback(worker: string): Promise<Deployment> {
    return this.call("POST", `/v1/workers/${enc(worker)}/rollback`);
  }

  analytics(worker: string, since: number, until: number, step: number): Promise<Analytics> {
    return this.get(`/v1/workers/${enc(worker)}/analytics?since=${since}&until=${until}&step=${step}`);
  }

  logs(worker: string, query: URLSearchParams): Promise<LogPage> {
    return this.get(`/v1/workers/${enc(worker)}/logs?${query.toString()}`);
  }

  async schedules(worker: string): Promise<string[]> {
    return (await this.get<{ crons: string[] }>(`/v1/workers/${enc(worker)}/schedules`)).crons;
  }

  async runs(worker: string): Promise<ScheduleRun[]> {
    return (await this.get<{ runs: ScheduleRun[] }>(`/v1/workers/${enc(worker)}/schedules/runs`)).runs;
  }

  async queues(): Promise<QueueInfo[]> {
    return (await this.get<{ queues: QueueInfo[] }>("/v1/queues")).queues;
  }

  async namespaces(): Promise<KvNamespace[]> {
    return (await this.get<{ namespaces: KvNamespace[] }>("/v1/kv/namespaces")).namespaces;
  }

  usage(worker: string, since: number): Promise<UsageView> {
    return this.get(`/v1/workers/${enc(worker)}/usage?since=${since}`);
  }

  invoice(account: string, month: string): Promise<Invoice> {
    return this.get(`/v1/accounts/${enc(account)}/invoices/${month}`);
  }

  edges(): Promise<EdgeList> {
    return this.get("/v1/edges");
  }

  /**
   * The live tail. A browser cannot set `Authorization` on a WebSocket, so the token travels
   * as the subprotocol `isola.bearer.TOKEN`, offered beside `isola.tail` (which the API selects).
   */
  tail(worker: string, query: URLSearchParams): WebSocket {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const q = query.toString();
    const url = `${scheme}//${location.host}/v1/workers/${enc(worker)}/tail${q ? `?${q}` : ""}`;
    return new WebSocket(url, ["isola.tail", `isola.bearer.${this.token}`]);
  }
}

function enc(s: string): string {
  return encodeURIComponent(s);
}
