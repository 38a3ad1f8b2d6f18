// The dashboard: sign in with an API token, then workers, a worker's page and (admin) the
// fleet. Pages are hash routes (#/, #/workers/NAME, #/fleet); everything comes from the public
// API with the signed-in token, which lives in sessionStorage only.
import { Api, ApiFailure, type Analytics, type Bucket, type Deployment, type EdgeInfo, type TailMessage, type VersionInfo, type WhoAmI } from "./api.js";
import { lineChart, sparkline, type Series } from "./chart.js";
import { bytes, h, num, replace, short, when, type Child } from "./dom.js";

const TOKEN_KEY = "isola.token";
const BAD_TOKEN =
  "This token was not accepted by the control plane (401): check it or create one with `POST /v1/tokens` (an account's token; `isola-control init` wrote the admin token to DATA_DIR/admin-token).";

interface Session {
  api: Api;
  me: WhoAmI;
}

let session: Session | undefined;
/** Run when the page changes (closes a tail, stops timers). */
let cleanups: (() => void)[] = [];

const main = (): HTMLElement => document.getElementById("main")!;
const top = (): HTMLElement => document.getElementById("top")!;

function failure(e: unknown): string {
  if (e instanceof ApiFailure) return e.status === 401 ? BAD_TOKEN : `${e.message} (${e.status} ${e.code})`;
  return String(e);
}

function alertBox(e: unknown): HTMLElement {
  return h("p", { class: "error", role: "alert" }, failure(e));
}

/** A section whose body loads on its own, so one failing call leaves the rest of the page. */
function section(id: string, title: string, load: (body: HTMLElement) => Promise<void>, ...controls: Child[]): HTMLElement {
  const body = h("div", { class: "body" }, h("p", { class: "muted" }, "Loading…"));
  const el = h("section", { id, "aria-labelledby": `${id}-h` }, h("div", { class: "section-head" }, h("h2", { id: `${id}-h` }, title), controls), body);
  load(body).catch((e: unknown) => replace(body, alertBox(e)));
  return el;
}

function table(headers: string[], rows: Child[][], caption?: string): HTMLElement {
  return h(
    "div",
    { class: "scroll" },
    h("table", {}, caption ? h("caption", { class: "sr-only" }, caption) : null, h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))))),
  );
}

function deploymentText(d: Deployment | null | undefined): string {
  if (!d) return "not deployed";
  return d.versions.map((v) => `${short(v.id)} ${v.percentage}%`).join(" · ");
}

// Sign in.

function signIn(error?: string): void {
  replace(top());
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const message = h("div", { "aria-live": "assertive" }, error ? h("p", { class: "error", role: "alert" }, error) : null);
  const form = h(
    "form",
    { class: "card signin", "aria-labelledby": "signin-h" },
    h("h1", { id: "signin-h" }, "Isola"),
    h("p", {}, "Sign in with an API token. It is kept in this browser tab only (session storage) and sent to this control plane's API alone."),
    h("label", { for: "token" }, "API token"),
    input,
    h("button", { type: "submit" }, "Sign in"),
    message,
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    void start(token).catch((e: unknown) => replace(message, alertBox(e)));
  });
  replace(main(), form);
  input.focus();
}

async function start(token: string): Promise<void> {
  const api = new Api(token);
  let me: WhoAmI;
  try {
    me = await api.whoami();
  } catch (e) {
    if (e instanceof ApiFailure && e.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      session = undefined;
      signIn(BAD_TOKEN);
      return;
    }
    throw e;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  session = { api, me };
  route();
}

function signOut(): void {
  sessionStorage.removeItem(TOKEN_KEY);
  session = undefined;
  for (const c of cleanups.splice(0)) c();
  location.hash = "#/";
  signIn();
}

function nav(current: string): void {
  if (!session) return;
  const link = (href: string, text: string): HTMLElement => h("a", { href, "aria-current": current === href ? "page" : null }, text);
  replace(
    top(),
    h(
      "nav",
      { "aria-label": "Main" },
      h("a", { href: "#/", class: "brand" }, "Isola"),
      link("#/", "Workers"),
      session.me.admin ? link("#/fleet", "Fleet") : null,
      h("span", { class: "who" }, `${session.me.account}${session.me.admin ? " (admin)" : ""}`),
      h("button", { type: "button", class: "link", onclick: signOut }, "Sign out"),
    ),
  );
}

// Router.

function route(): void {
  for (const c of cleanups.splice(0)) c();
  if (!session) return signIn();
  const hash = location.hash || "#/";
  const worker = /^#\/workers\/(.+)$/.exec(hash);
  if (worker?.[1]) {
    nav("#/");
    workerPage(session, decodeURIComponent(worker[1]));
  } else if (hash === "#/fleet") {
    nav("#/fleet");
    fleetPage(session);
  } else {
    nav("#/");
    workersPage(session);
  }
  main().focus({ preventScroll: true });
}

// Workers.

function workersPage({ api }: Session): void {
  document.title = "Workers · Isola";
  replace(
    main(),
    h("h1", {}, "Workers"),
    section("workers", "All workers", async (body) => {
      const workers = await api.workers();
      if (!workers.length) {
        replace(body, h("p", {}, "No workers yet: deploy one with `isola deploy`."));
        return;
      }
      const now = Math.floor(Date.now() / 1000);
      const until = (Math.floor(now / 3600) + 1) * 3600;
      const rows = await Promise.all(
        workers.map(async (w) => {
          const a = await api.analytics(w.name, until - 24 * 3600, until, 3600).catch(() => undefined);
          const req = a?.buckets.map((b) => b.requests) ?? [];
          const total = req.reduce((x, y) => x + y, 0);
          const errors = a?.buckets.reduce((x, b) => x + b.errors, 0) ?? 0;
          return [
            h("a", { href: `#/workers/${encodeURIComponent(w.name)}` }, w.name),
            deploymentText(w.active_deployment),
            h("span", { "data-testid": `requests-24h-${w.name}` }, num(total)),
            num(errors),
            sparkline(req, `requests per hour over 24 h for ${w.name}`),
            when(w.active_deployment?.created_at),
          ];
        }),
      );
      replace(body, table(["Worker", "Active deployment", "Requests (24 h)", "Errors (24 h)", "Last 24 h", "Last deploy"], rows, "Workers"));
    }),
  );
}

// A worker's page.

const RANGES: Record<string, { seconds: number; step: number; label: string }> = {
  "1h": { seconds: 3600, step: 60, label: "Last hour" },
  "24h": { seconds: 24 * 3600, step: 900, label: "Last 24 hours" },
  "7d": { seconds: 7 * 24 * 3600, step: 3600, label: "Last 7 days" },
};

function workerPage(sess: Session, name: string): void {
  const { api } = sess;
  document.title = `${name} · Isola`;
  const status = h("p", { class: "status", role: "status", "aria-live": "polite" });
  let versions: VersionInfo[] = [];
  const label = (hash: string): string => {
    const v = versions.find((x) => x.hash === hash || x.id === hash);
    return v ? `version ${short(v.id)}` : `version ${short(hash)}`;
  };
  const active = h("p", { "data-testid": "active-deployment" }, "…");

  // Charts.
  const charts = h("div", { class: "chart-area" }, h("p", { class: "muted" }, "Loading…"));
  const range = h("select", { id: "range" }, Object.entries(RANGES).map(([k, r]) => h("option", { value: k }, r.label)), h("option", { value: "custom" }, "Custom…"));
  const from = h("input", { id: "from", type: "datetime-local" });
  const to = h("input", { id: "to", type: "datetime-local" });
  const custom = h("span", { class: "custom", hidden: true }, h("label", { for: "from" }, "From"), from, h("label", { for: "to" }, "to"), to);
  const refresh = h("button", { type: "button" }, "Refresh");
  range.addEventListener("change", () => {
    custom.hidden = range.value !== "custom";
    if (range.value !== "custom") void drawCharts();
  });
  refresh.addEventListener("click", () => void drawCharts());
  const drawCharts = async (): Promise<void> => {
    let since: number;
    let until: number;
    let step: number;
    const r = RANGES[range.value];
    if (r) {
      step = r.step;
      until = (Math.floor(Date.now() / 1000 / step) + 1) * step;
      since = until - r.seconds;
    } else {
      since = Math.floor(new Date(from.value).getTime() / 1000);
      until = Math.floor(new Date(to.value).getTime() / 1000);
      if (!Number.isFinite(since) || !Number.isFinite(until) || until <= since) {
        replace(charts, h("p", { class: "error", role: "alert" }, "Choose a custom range: a start before its end."));
        return;
      }
      step = Math.max(60, Math.ceil((until - since) / 120 / 60) * 60);
    }
    try {
      const a = await api.analytics(name, since, until, step);
      replace(charts, renderCharts(a, label));
    } catch (e) {
      replace(charts, alertBox(e));
    }
  };

  // Deployments.
  const deployBody = h("div", {});
  const drawDeployments = async (): Promise<void> => {
    const [vs, ds] = await Promise.all([api.versions(name), api.deployments(name)]);
    versions = vs;
    const current = ds.find((d) => d.active);
    replace(active, `Active deployment: ${current ? current.versions.map((v) => `${label(v.id)} at ${v.percentage}%`).join(", ") : "none"}`);
    const deploy = async (split: { id: string; percentage: number }[]): Promise<void> => {
      const text = split.map((x) => `${label(x.id)} at ${x.percentage}%`).join(" and ");
      if (!confirm(`Deploy ${name}: ${text}?`)) return;
      try {
        await api.deploy(name, split);
        replace(status, `Deployed ${text}; edges are applying it.`);
      } catch (e) {
        replace(status, alertBox(e));
      }
      await drawDeployments();
    };
    const options = (): HTMLOptionElement[] => vs.map((v) => h("option", { value: v.id }, `${short(v.id)}${v.message ? ` — ${v.message}` : ` — ${when(v.created_at)}`}`));
    const a = h("select", { id: "split-a" }, options());
    const b = h("select", { id: "split-b" }, options());
    if (vs[1]) b.value = vs[1].id;
    if (vs[0]) a.value = vs[0].id;
    const pct = h("input", { id: "split-pct", type: "number", min: 1, max: 99, value: 50, inputmode: "numeric" });
    const splitForm = h(
      "form",
      { class: "split", "aria-label": "Split traffic between two versions" },
      h("label", { for: "split-a" }, "Version"),
      a,
      h("label", { for: "split-pct" }, "gets (%)"),
      pct,
      h("label", { for: "split-b" }, "the rest goes to"),
      b,
      h("button", { type: "submit" }, "Deploy split"),
    );
    splitForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const p = Number(pct.value);
      if (a.value === b.value || !(p >= 1 && p <= 99)) {
        replace(status, h("span", { class: "error", role: "alert" }, "Pick two different versions and a percentage from 1 to 99."));
        return;
      }
      void deploy([
        { id: a.value, percentage: p },
        { id: b.value, percentage: 100 - p },
      ]);
    });
    const rollback = h("button", { type: "button", class: "danger" }, "Roll back");
    rollback.addEventListener("click", () => {
      if (!confirm(`Roll ${name} back to its previous deployment?`)) return;
      void api
        .rollback(name)
        .then((d) => replace(status, `Rolled back: ${d.versions.map((v) => `${label(v.id)} at ${v.percentage}%`).join(", ")} is active.`))
        .catch((e: unknown) => replace(status, alertBox(e)))
        .then(drawDeployments);
    });
    replace(
      deployBody,
      h("h3", {}, "Versions"),
      table(
        ["Version", "Hash", "Uploaded", "Message", ""],
        vs.map((v) => [
          short(v.id),
          h("code", {}, short(v.hash)),
          when(v.created_at),
          v.message ?? "",
          h("button", { type: "button", "aria-label": `Deploy version ${short(v.id)} at 100%`, onclick: () => void deploy([{ id: v.id, percentage: 100 }]) }, "Deploy this version"),
        ]),
        "Versions",
      ),
      vs.length > 1 ? splitForm : null,
      h("div", { class: "actions" }, rollback),
      h("h3", {}, "Deployments"),
      table(
        ["#", "Versions", "When", "State"],
        ds.map((d) => [String(d.id), deploymentText(d), when(d.created_at), d.active ? "active" : d.rolled_back ? "rolled back" : ""]),
        "Deployments",
      ),
    );
  };

  replace(
    main(),
    h("h1", {}, name),
    active,
    status,
    h(
      "section",
      { id: "metrics", "aria-labelledby": "metrics-h" },
      h("div", { class: "section-head" }, h("h2", { id: "metrics-h" }, "Metrics"), h("label", { for: "range" }, "Range"), range, custom, refresh),
      charts,
    ),
    section("deployments", "Versions and deployments", async (body) => {
      replace(body, deployBody);
      await drawDeployments();
      await drawCharts();
    }),
    tailSection(api, name),
    logsSection(api, name, label),
    section("triggers", "Cron triggers, queues and KV", async (body) => {
      const [crons, runs, queues, namespaces] = await Promise.all([
        api.schedules(name),
        api.runs(name),
        api.queues().catch(() => []),
        api.namespaces().catch(() => []),
      ]);
      const consumed = queues.filter((q) => q.consumer?.worker === name);
      replace(
        body,
        h("h3", {}, "Cron schedules"),
        crons.length ? h("ul", {}, crons.map((c) => h("li", {}, h("code", {}, c)))) : h("p", { class: "muted" }, "No cron triggers."),
        runs.length ? table(["Cron", "Scheduled", "Outcome", "Attempt", "Edge", "Duration"], runs.slice(0, 10).map((r) => [h("code", {}, r.cron), when(r.scheduled_time), r.outcome, String(r.attempt), r.edge ?? "", `${r.duration_ms.toFixed(1)} ms`]), "Last runs") : null,
        h("h3", {}, "Queues it consumes"),
        consumed.length
          ? table(["Queue", "Backlog", "Delayed", "In flight", "Delivered", "Retried", "Dead-lettered"], consumed.map((q) => [q.name, num(q.backlog), num(q.delayed), num(q.in_flight), num(q.delivered), num(q.retried), num(q.dead_lettered)]), "Queues")
          : h("p", { class: "muted" }, "It consumes no queue."),
        h("h3", {}, "KV namespaces of the account"),
        namespaces.length ? table(["Title", "Id", "Created"], namespaces.map((n) => [n.title, h("code", {}, n.id), when(n.created_at)]), "KV namespaces") : h("p", { class: "muted" }, "No KV namespaces."),
      );
    }),
    section("billing", "This month", async (body) => {
      const now = new Date();
      const month = `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, "0")}`;
      const monthStart = Math.floor(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1) / 1000);
      const [usage, invoice] = await Promise.all([api.usage(name, monthStart), api.invoice(sess.me.account, month)]);
      const lines = invoice.lines.filter((l) => l.worker === name || l.worker === null);
      replace(
        body,
        h(
          "dl",
          { class: "facts" },
          h("dt", {}, "Requests"),
          h("dd", {}, num(usage.requests)),
          h("dt", {}, "Errors"),
          h("dd", {}, num(usage.errors)),
          h("dt", {}, "CPU time"),
          h("dd", {}, `${usage.cpu_ms.toFixed(1)} ms`),
          h("dt", {}, "Egress"),
          h("dd", {}, bytes(usage.egress_bytes)),
        ),
        h("h3", {}, `Invoice ${invoice.month} (${invoice.closed ? "closed" : "so far"})`),
        table(
          ["Worker", "Item", "Quantity", "Unit price", "Amount"],
          lines.map((l) => [l.worker ?? "allowance", l.item, l.quantity, l.unit_price, `${l.amount} ${invoice.currency}`]),
          "Invoice lines",
        ),
        h("p", {}, `Account total: ${invoice.total} ${invoice.currency} (due ${invoice.amount_due})`),
      );
    }),
  );
}

function renderCharts(a: Analytics, label: (hash: string) => string): HTMLElement {
  const times = a.buckets.map((b) => new Date(b.start).getTime());
  const sum = (f: (b: Bucket) => number): number => a.buckets.reduce((x, b) => x + f(b), 0);
  const total = sum((b) => b.requests);
  const versions = [...new Set(a.buckets.flatMap((b) => b.by_version.map((v) => v.version)))];
  const split = versions.length > 1;
  const perVersion = (f: (c: Bucket["by_version"][number]) => number | null): Series[] =>
    split
      ? versions.map((v) => {
          const values = a.buckets.map((b) => {
            const c = b.by_version.find((x) => x.version === v);
            return c ? f(c) : null;
          });
          return { label: label(v), values, summary: "" };
        })
      : [];
  const outcomes = [...new Set(a.buckets.flatMap((b) => Object.keys(b.errors_by_outcome)))];
  const requests: Series[] = [
    { label: "all", values: a.buckets.map((b) => b.requests), summary: `${num(total)} requests`, dashed: true },
    { label: "ok", values: a.buckets.map((b) => b.requests - b.errors), summary: num(sum((b) => b.requests - b.errors)) },
    ...(outcomes.length
      ? outcomes.map((o) => ({ label: o, values: a.buckets.map((b) => b.errors_by_outcome[o] ?? 0), summary: num(sum((b) => b.errors_by_outcome[o] ?? 0)) }))
      : [{ label: "errors", values: a.buckets.map((b) => b.errors), summary: num(sum((b) => b.errors)) }]),
    ...perVersion((c) => c.requests).map((x) => ({ ...x, summary: `${num(a.buckets.reduce((t, b) => t + (b.by_version.find((c) => label(c.version) === x.label)?.requests ?? 0), 0))} requests` })),
  ];
  const maxOf = (values: (number | null)[]): string => {
    const m = Math.max(...values.filter((v): v is number => v !== null));
    return Number.isFinite(m) ? `max ${m.toFixed(2)} ms` : "no data";
  };
  const q = (title: string, pick: (c: Bucket["by_version"][number] | Bucket) => { p50: number | null; p99: number | null }, testid: string): HTMLElement => {
    const series: Series[] = [
      { label: "p50", values: a.buckets.map((b) => pick(b).p50), summary: "" },
      { label: "p99", values: a.buckets.map((b) => pick(b).p99), summary: "" },
      ...perVersion((c) => pick(c).p99).map((x) => ({ ...x, label: `${x.label} p99` })),
    ].map((x) => ({ ...x, summary: maxOf(x.values) }));
    return lineChart(title, times, series, (v) => `${v.toFixed(1)}`, testid);
  };
  const egress: Series[] = [
    { label: "all", values: a.buckets.map((b) => b.egress_bytes), summary: bytes(sum((b) => b.egress_bytes)) },
    ...perVersion((c) => c.egress_bytes).map((x) => ({ ...x, summary: bytes(x.values.reduce<number>((t, v) => t + (v ?? 0), 0)) })),
  ];
  return h(
    "div",
    { class: "charts" },
    h("p", { class: "total", "data-testid": "requests-total" }, `${num(total)} requests in range`),
    lineChart("Requests", times, requests, (v) => num(Math.round(v)), "requests-chart"),
    q("CPU time (ms)", (c) => c.cpu_ms, "cpu-chart"),
    q("Wall time (ms)", (c) => c.wall_ms, "wall-chart"),
    lineChart("Egress", times, egress, bytes, "egress-chart"),
    h("p", { class: "muted" }, `Quantiles within ${(a.quantile_relative_error * 100).toFixed(0)} % (DDSketch); ${a.step / 60} min per point.`),
  );
}

// Live tail.

function tailLine(m: TailMessage): HTMLElement {
  const e = m.event;
  const what = e.request
    ? `${e.request.method} ${e.request.url}${e.response ? ` ${e.response.status}` : ""}`
    : e.cron
      ? `cron "${e.cron}"`
      : e.queue
        ? `queue ${e.queue} (${e.batchSize ?? 0} messages)`
        : (e.rpcMethod ?? "event");
  return h(
    "li",
    { class: m.outcome === "ok" ? "ok" : "bad" },
    h("span", { class: "time" }, new Date(m.eventTimestamp).toLocaleTimeString()),
    " ",
    h("strong", {}, m.outcome),
    ` ${what} · ${short(m.scriptVersion.id)} · ${m.edge}`,
    m.logs.length || m.exceptions.length
      ? h(
          "ul",
          {},
          m.logs.map((l) => h("li", { class: `log ${l.level}` }, `(${l.level}) ${l.message.join(" ")}`)),
          m.exceptions.map((x) => h("li", { class: "log error" }, `${x.name}: ${x.message}`)),
        )
      : null,
  );
}

function tailSection(api: Api, name: string): HTMLElement {
  const statusSel = h("select", { id: "tail-status" }, h("option", { value: "" }, "any"), ["ok", "error", "canceled"].map((s) => h("option", { value: s }, s)));
  const method = h("input", { id: "tail-method", placeholder: "GET", size: 6 });
  const search = h("input", { id: "tail-search", type: "search" });
  const sampling = h("input", { id: "tail-sampling", type: "number", min: 0.01, max: 1, step: 0.01, value: 1 });
  const header = h("input", { id: "tail-header", placeholder: "name:value", size: 14 });
  const ip = h("input", { id: "tail-ip", placeholder: "203.0.113.7", size: 12 });
  const version = h("input", { id: "tail-version", placeholder: "id or hash", size: 10 });
  const state = h("p", { class: "muted", role: "status", "data-testid": "tail-state" }, "Not started.");
  const list = h("ol", { class: "tail", "aria-live": "polite", "aria-label": "Live events, newest first", "data-testid": "tail-lines" });
  const startBtn = h("button", { type: "submit" }, "Start");
  const pauseBtn = h("button", { type: "button", disabled: true }, "Pause");
  let ws: WebSocket | undefined;
  let paused = false;
  let held: TailMessage[] = [];
  const show = (m: TailMessage): void => {
    list.prepend(tailLine(m));
    while (list.children.length > 200) list.lastElementChild?.remove();
  };
  const stop = (): void => {
    ws?.close();
    ws = undefined;
  };
  cleanups.push(stop);
  const form = h(
    "form",
    { class: "filters", "aria-label": "Tail filters" },
    h("label", { for: "tail-status" }, "Status"),
    statusSel,
    h("label", { for: "tail-method" }, "Method"),
    method,
    h("label", { for: "tail-search" }, "Search"),
    search,
    h("label", { for: "tail-header" }, "Header"),
    header,
    h("label", { for: "tail-ip" }, "Client IP"),
    ip,
    h("label", { for: "tail-version" }, "Version"),
    version,
    h("label", { for: "tail-sampling" }, "Sampling rate"),
    sampling,
    startBtn,
    pauseBtn,
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    stop();
    const q = new URLSearchParams();
    if (statusSel.value) q.append("status", statusSel.value);
    for (const m of method.value.split(/[ ,]+/).filter(Boolean)) q.append("method", m.toUpperCase());
    if (search.value) q.set("search", search.value);
    if (header.value) q.append("header", header.value);
    for (const a of ip.value.split(/[ ,]+/).filter(Boolean)) q.append("client_ip", a);
    if (version.value) q.append("version", version.value.trim());
    if (sampling.value && Number(sampling.value) !== 1) q.set("sampling_rate", sampling.value);
    const socket = api.tail(name, q);
    ws = socket;
    replace(state, "Connecting…");
    socket.addEventListener("open", () => {
      replace(state, "Live: connected.");
      pauseBtn.disabled = false;
      startBtn.textContent = "Restart";
    });
    socket.addEventListener("message", (ev: MessageEvent<string>) => {
      const m = JSON.parse(ev.data) as TailMessage;
      if (paused) {
        held.push(m);
        replace(state, `Paused: ${held.length} event(s) held.`);
      } else show(m);
    });
    socket.addEventListener("close", (ev) => {
      if (ws !== socket) return;
      pauseBtn.disabled = true;
      replace(state, h("span", { class: ev.code === 1000 || ev.code === 1005 ? "" : "error" }, `Closed${ev.reason ? `: ${ev.reason}` : ev.code === 1006 ? ": the control plane refused or dropped the tail (check the filters and the token)" : ""}.`));
    });
  });
  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    pauseBtn.setAttribute("aria-pressed", String(paused));
    if (!paused) {
      for (const m of held) show(m);
      held = [];
      replace(state, "Live: connected.");
    } else replace(state, "Paused: 0 event(s) held.");
  });
  return h("section", { id: "tail", "aria-labelledby": "tail-h" }, h("h2", { id: "tail-h" }, "Live tail"), form, state, list);
}

// Invocation logs.

function logsSection(api: Api, name: string, label: (hash: string) => string): HTMLElement {
  const search = h("input", { id: "logs-search", type: "search" });
  const statusSel = h("select", { id: "logs-status" }, h("option", { value: "" }, "any"), ["ok", "error", "canceled"].map((s) => h("option", { value: s }, s)));
  const since = h("select", { id: "logs-since" }, Object.entries(RANGES).map(([k, r]) => h("option", { value: k }, r.label)));
  since.value = "24h";
  const results = h("div", {});
  const form = h(
    "form",
    { class: "filters", "aria-label": "Search invocation logs" },
    h("label", { for: "logs-search" }, "Text"),
    search,
    h("label", { for: "logs-status" }, "Status"),
    statusSel,
    h("label", { for: "logs-since" }, "Since"),
    since,
    h("button", { type: "submit" }, "Search"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams({ limit: "50" });
    q.set("since", String(Math.floor(Date.now() / 1000) - (RANGES[since.value]?.seconds ?? 86400)));
    if (search.value) q.set("search", search.value);
    if (statusSel.value) q.append("status", statusSel.value);
    replace(results, h("p", { class: "muted" }, "Searching…"));
    api
      .logs(name, q)
      .then((page) =>
        replace(
          results,
          page.logs.length
            ? table(
                ["When", "Outcome", "Event", "Version", "CPU", "Logs"],
                page.logs.map((m) => [
                  when(m.eventTimestamp),
                  m.outcome,
                  m.event.request ? `${m.event.request.method} ${m.event.request.url}` : (m.event.cron ?? m.event.queue ?? m.event.rpcMethod ?? ""),
                  label(m.scriptVersion.id),
                  `${m.cpuTime.toFixed(2)} ms`,
                  [...m.logs.map((l) => l.message.join(" ")), ...m.exceptions.map((x) => `${x.name}: ${x.message}`)].join("\n"),
                ]),
                "Invocation logs",
              )
            : h("p", { class: "muted" }, "No invocation matched."),
        ),
      )
      .catch((e: unknown) => replace(results, alertBox(e)));
  });
  return h("section", { id: "logs", "aria-labelledby": "logs-h" }, h("h2", { id: "logs-h" }, "Invocation logs"), form, results);
}

// Fleet (admin).

/** Columns shown first when the edges have them; any other field follows. */
const EDGE_COLUMNS = ["name", "region", "location", "address", "revision", "last_seen", "health", "isolates", "requests_per_second", "errors"];

function cell(key: string, v: unknown, desired: number): Child {
  if (v === null || v === undefined) return "";
  if (key === "revision" && typeof v === "number") return `${v}${v === desired ? " (current)" : ` (behind ${desired})`}`;
  if ((key === "last_seen" || key.endsWith("_at")) && typeof v === "string") return when(v);
  if (Array.isArray(v)) return v.length ? v.map((x) => (typeof x === "string" ? x : JSON.stringify(x))).join(", ") : "none";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function fleetPage({ api, me }: Session): void {
  document.title = "Fleet · Isola";
  if (!me.admin) {
    replace(main(), h("h1", {}, "Fleet"), h("p", { class: "error", role: "alert" }, "The fleet needs an admin token."));
    return;
  }
  replace(
    main(),
    h("h1", {}, "Fleet"),
    section("edges", "Edges", async (body) => {
      const list = await api.edges();
      const keys = new Set<string>();
      for (const e of list.edges) for (const k of Object.keys(e)) keys.add(k);
      const columns = [...EDGE_COLUMNS.filter((k) => keys.has(k)), ...[...keys].filter((k) => !EDGE_COLUMNS.includes(k))];
      const title = (k: string): string => (k === "errors" ? "apply errors" : k.replace(/_/g, " "));
      replace(
        body,
        h("p", {}, `Desired revision ${list.revision}; ${list.edges.length} edge(s).`),
        table(
          columns.map(title),
          list.edges.map((e: EdgeInfo) => columns.map((k) => cell(k, e[k], list.revision))),
          "Edges",
        ),
      );
    }),
  );
}

// Start.

window.addEventListener("hashchange", route);
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) void start(saved).catch((e: unknown) => signIn(failure(e)));
else signIn();
