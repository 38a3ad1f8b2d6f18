//! Node-level figures: memory per idle worker isolate, first-request latency
//! to an unseen worker (a 1 KB one, a burst of them, and a 1 MB esbuild-style
//! app without, before and with its code cache), and how far a busy loop
//! overruns its CPU limit.
//!
//! `cargo bench -p isola-runtime --bench density` (set `DENSITY_MAX=1000`,
//! the default, for the 1,000-worker figure). Prints a markdown table.
//!
//! `--churn` prints only the churn figures instead: 10,000 never-seen
//! workers loaded back to back on a node of two V8 threads capped at 500
//! isolates, while one hot worker gets a request every millisecond. Run it
//! on two cores (one for the hot worker, one for the churn).
//!
//! For profiling one path, `--first` prints only the ready-stock
//! first-request figure, over `DENSITY_FIRST` (2,000) never-seen workers;
//! `--burst` only the burst's, over `DENSITY_BURST` (200); `--big` only the
//! 1 MB bundle's with a warm code cache, over `DENSITY_BIG` (400) isolates;
//! `--big-rss` only the 1 MB bundle's memory per worker; `--traffic` only
//! the memory per hello worker before and after `DENSITY_ROUNDS` (1,000)
//! requests each, and once idle.
//!
//! `--floor` prints only what an isolate costs (memory, time to make)
//! beneath Isola's Workers API, over `DENSITY_FLOOR` (100) kept isolates of
//! each kind: V8's own isolate and context, a bare deno_core runtime (a
//! snapshot without extensions), and Isola's blank isolate.
//!
//! `--switch` prints only what taking turns costs: a call into each of N
//! isolates in turn, one at a time, for N in `DENSITY_SWITCH` (1,10,100,1000),
//! first with bare V8 isolates (a context and one small function each), then
//! with Isola hello workers (a request each, through the runtime; the V8
//! thread's CPU). Every call is a turn of its own at every N, so what
//! grows with N is the price of a cold isolate: its heap, maps and compiled
//! code are out of the core's caches when its turn comes again. Run it
//! pinned to one core (the caller's thread then never leaves the V8 thread
//! idle; idle wake-ups would cost more than the turn).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use isola_runtime::Bundle;
use isola_runtime::CodeCacheConfig;
use isola_runtime::Config;
use isola_runtime::InvocationRecord;
use isola_runtime::Limits;
use isola_runtime::MeterSink;
use isola_runtime::Runtime;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerKey;

/// The edge's allocator (`isola-edge` links it the same way), so that the
/// memory figures are what an edge process holds.
#[global_allocator]
static ALLOCATOR: isola_alloc::Allocator = isola_alloc::Allocator;

const HELLO: &str = r#"export default { fetch() { return new Response("Hello, world!"); } };"#;
const SPIN: &str = r#"export default { fetch() { for (;;) {} } };"#;

fn rss() -> u64 {
  let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
  statm
    .split_whitespace()
    .nth(1)
    .unwrap()
    .parse::<u64>()
    .unwrap()
    * 4096
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
  let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
  sorted[i]
}

async fn hit(rt: &Runtime, name: &str, code: &'static str, limits: Limits) -> u16 {
  fetch(rt, name, Bytes::from_static(code.as_bytes()), limits, "/").await
}

/// A request to `path` of worker `name`, version `v1`, whose one module is
/// `code`.
async fn fetch(rt: &Runtime, name: &str, code: Bytes, limits: Limits, path: &str) -> u16 {
  fetch_bundle(rt, name, one_module(code), limits, path).await
}

/// A bundle of one module, `worker.js`.
fn one_module(code: Bytes) -> Bundle {
  Bundle::from_modules("worker.js", [("worker.js".to_string(), code)]).unwrap()
}

/// [`fetch`] of a bundle made earlier: an edge keeps each deployed
/// version's bundle (and what it works out once per version) while it is
/// routed, so a later isolate of it starts from that.
async fn fetch_bundle(rt: &Runtime, name: &str, bundle: Bundle, limits: Limits, path: &str) -> u16 {
  let config = WorkerConfig::new(name).limits(limits);
  fetch_config(rt, name, bundle, config, path).await
}

/// [`fetch_bundle`] of a worker with its own `config`.
async fn fetch_config(
  rt: &Runtime,
  name: &str,
  bundle: Bundle,
  config: WorkerConfig,
  path: &str,
) -> u16 {
  let key = WorkerKey::new(name.to_string(), "v1");
  let source = move || Ok((bundle, config));
  let req = isola_runtime::empty_request(&format!("http://bench.test{path}"));
  match rt.fetch(&key, source, req).await {
    Ok(r) => {
      let status = r.status().as_u16();
      let _ = r.into_body().collect_bytes().await;
      status
    }
    Err(e) => isola_runtime::error_response(&e).status().as_u16(),
  }
}

async fn wait_for(mut f: impl FnMut() -> bool) {
  let start = Instant::now();
  while !f() && start.elapsed() < Duration::from_secs(30) {
    tokio::time::sleep(Duration::from_millis(2)).await;
  }
}

async fn density(max: usize) -> Vec<(usize, f64)> {
  let rt = Runtime::new(Config::default().threads(1).stock(0).max_isolates(max + 10)).unwrap();
  // One worker first, so that V8's process-wide setup is not counted.
  hit(&rt, "warmup", HELLO, Limits::default()).await;
  let base = rss();
  let mut out = Vec::new();
  let mut loaded = 0;
  for target in [100, max] {
    while loaded < target {
      hit(&rt, &format!("tenant-{loaded}"), HELLO, Limits::default()).await;
      loaded += 1;
    }
    let per = (rss() - base) as f64 / loaded as f64 / (1 << 20) as f64;
    out.push((loaded, per));
  }
  out
}

/// A small worker of about 1 KB: a few routes, `GET /` answers text.
const SMALL: &str = r#"const json = (body, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

function hello(request) {
  return new Response("Hello, world!", { headers: { "content-type": "text/plain" } });
}

async function echo(request) {
  if (request.method !== "POST") return json({ error: "use POST" }, 405);
  const body = await request.text();
  return json({ length: body.length, type: request.headers.get("content-type") });
}

function whoami(request, env) {
  return json({
    agent: request.headers.get("user-agent"),
    country: request.cf?.country ?? null,
    name: env.NAME ?? "anonymous",
  });
}

const routes = new Map([
  ["/", hello],
  ["/echo", echo],
  ["/whoami", whoami],
  ["/health", () => json({ ok: true })],
]);

export default {
  async fetch(request, env, ctx) {
    const { pathname } = new URL(request.url);
    const route = routes.get(pathname);
    if (route === undefined) return json({ error: `no route ${pathname}` }, 404);
    return route(request, env, ctx);
  },
};
"#;

/// The 1 KB worker with a source no other worker has (so no code cache of
/// it exists yet), as every tenant's code is its own.
fn unique_worker(name: &str) -> Bytes {
  Bytes::from(format!("{SMALL}// {name}\n"))
}

fn p50_p99(mut times: Vec<f64>) -> (f64, f64) {
  times.sort_by(f64::total_cmp);
  (percentile(&times, 0.5), percentile(&times, 0.99))
}

async fn first_request(stock: usize, n: usize, code_cache: CodeCacheConfig) -> (f64, f64) {
  let rt = Runtime::new(
    Config::default()
      .threads(1)
      .stock(stock)
      .max_isolates(100)
      .code_cache(code_cache),
  )
  .unwrap();
  hit(&rt, "warmup", HELLO, Limits::default()).await;
  let mut times = Vec::with_capacity(n);
  for i in 0..n {
    // A warm node: the stock has had time to refill since the last arrival.
    wait_for(|| rt.stats().stock >= stock).await;
    let name = format!("unseen-{stock}-{i}");
    let start = Instant::now();
    assert_eq!(
      fetch(&rt, &name, unique_worker(&name), Limits::default(), "/").await,
      200
    );
    times.push(start.elapsed().as_secs_f64() * 1000.0);
  }
  p50_p99(times)
}

/// `n` never-seen workers back to back on a node with the default stock:
/// the stock is used up by the first ones and has no quiet time to refill.
async fn burst(n: usize) -> (f64, f64) {
  let rt = Runtime::new(Config::default().threads(1).max_isolates(n + 10)).unwrap();
  hit(&rt, "warmup", HELLO, Limits::default()).await;
  wait_for(|| rt.stats().stock >= 2).await;
  let mut times = Vec::with_capacity(n);
  for i in 0..n {
    let name = format!("burst-{i}");
    let start = Instant::now();
    assert_eq!(
      fetch(&rt, &name, unique_worker(&name), Limits::default(), "/").await,
      200
    );
    times.push(start.elapsed().as_secs_f64() * 1000.0);
  }
  p50_p99(times)
}

/// An esbuild-style bundle of about 1 MB: `__export` helpers, modules of
/// helper functions and classes with routes, a big object table and a
/// router built at the top level. `build` makes its source unique.
fn big_bundle(build: &str) -> Bytes {
  use std::fmt::Write as _;
  let mut js = String::with_capacity(1 << 20);
  js.push_str(
    r#"var __defProp = Object.defineProperty;
var __export = (target, all) => {
  for (var name in all) __defProp(target, name, { get: all[name], enumerable: true });
};
class BaseModel {
  constructor(fields) { this.fields = fields; this.createdAt = 0; }
  validate() { for (const [k, v] of Object.entries(this.fields)) { if (v === undefined) throw new TypeError(`missing ${k}`); } return true; }
  toJSON() { return { ...this.fields, kind: this.constructor.name }; }
}
"#,
  );
  let _ = writeln!(js, "const BUILD = {build:?};");
  let modules = 300;
  for m in 0..modules {
    let _ = write!(
      js,
      r#"
// src/modules/m{m}.ts
var m{m}_exports = {{}};
__export(m{m}_exports, {{ Model{m}: () => Model{m}, handler{m}: () => handler{m} }});
function format{m}(values, sep) {{
  const out = [];
  for (let i = 0; i < values.length; i++) {{
    if (values[i] % {k} === 0) out.push(String(values[i] * 2));
    else if (typeof values[i] === "string") out.push(values[i].toUpperCase());
    else out.push(String(values[i] + {m}));
  }}
  return out.join(sep ?? ",");
}}
function parse{m}(text) {{
  const parts = String(text).split("&").map((p) => p.split("="));
  const result = Object.create(null);
  for (const [k, v] of parts) {{ if (k) result[decodeURIComponent(k)] = v === undefined ? true : decodeURIComponent(v); }}
  return result;
}}
async function load{m}(id, cache) {{
  const key = "m{m}:" + id;
  if (cache.has(key)) return cache.get(key);
  const value = {{ id, score: (Number(id) * {k}) % 97, label: format{m}([id, {m}, "x{m}"], "-") }};
  cache.set(key, value);
  return value;
}}
class Model{m} extends BaseModel {{
  static table = "t{m}";
  constructor(fields) {{ super(fields); this.version = {m}; }}
  get summary() {{ return `${{Model{m}.table}}#${{this.fields.id}} v${{this.version}}`; }}
  validate() {{ super.validate(); if (String(this.fields.id).length > 64) throw new RangeError("id too long"); return true; }}
  static from(o) {{ const m = new Model{m}({{ id: o.id ?? "0", label: o.label ?? "" }}); m.validate(); return m; }}
}}
const cache{m} = new Map();
async function handler{m}(request, params) {{
  const url = new URL(request.url);
  const query = parse{m}(url.search.slice(1));
  const data = await load{m}(params.id, cache{m});
  const model = Model{m}.from({{ id: params.id, label: data.label }});
  return new Response(JSON.stringify({{ route: {m}, build: BUILD, summary: model.summary, model, data, query }}), {{
    headers: {{ "content-type": "application/json" }},
  }});
}}
"#,
      k = m % 7 + 2
    );
  }
  js.push_str(
    "
const CATALOG = {
",
  );
  while js.len() < (1 << 20) - 4096 {
    let i = js.len();
    let _ = writeln!(
      js,
      r#"  "sku-{i}": {{ name: "Item {i}", price: {}.{:02}, tags: ["t{}", "t{}"], stock: {} }},"#,
      i % 1000,
      i % 100,
      i % 13,
      i % 17,
      i % 50
    );
  }
  js.push_str(
    "};
",
  );
  js.push_str(
    r#"
class Router {
  constructor() { this.routes = []; }
  add(method, pattern, handler) {
    const keys = [];
    const source = pattern.replace(/:([a-z]+)/g, (_, k) => { keys.push(k); return "([^/]+)"; });
    this.routes.push({ method, re: new RegExp("^" + source + "$"), keys, handler });
    return this;
  }
  match(method, path) {
    for (const r of this.routes) {
      if (r.method !== method) continue;
      const m = r.re.exec(path);
      if (m) return { handler: r.handler, params: Object.fromEntries(r.keys.map((k, i) => [k, m[i + 1]])) };
    }
    return null;
  }
}
const router = new Router();
"#,
  );
  for m in 0..modules {
    let _ = writeln!(
      js,
      r#"router.add("GET", "/api/r{m}/:id", m{m}_exports.handler{m});"#
    );
  }
  js.push_str(
    r#"router.add("GET", "/catalog/:sku", async (request, params) => Response.json(CATALOG[params.sku] ?? null));
export default {
  async fetch(request) {
    const url = new URL(request.url);
    const found = router.match(request.method, url.pathname);
    if (!found) return new Response("not found", { status: 404 });
    return found.handler(request, found.params);
  },
};
"#,
  );
  Bytes::from(js)
}

/// How the 1 MB figure's isolates find the code cache.
#[derive(Clone, Copy, PartialEq)]
enum Cache {
  /// Turned off: every isolate parses and compiles.
  Off,
  /// On, each sample a new version: its first isolate compiles (and
  /// makes no cache: its code ran once).
  Cold,
  /// On, each sample a later isolate of one version (after eviction).
  Warm,
}

/// The 1 MB bundle's figures: first-request p50 and p99 (ms) and, with the
/// cache on, the size of its code cache (bytes).
async fn first_request_big(cache: Cache, n: usize) -> (f64, f64, u64) {
  let code_cache = if cache == Cache::Off {
    CodeCacheConfig::disabled()
  } else {
    CodeCacheConfig::default()
  };
  let rt = Runtime::new(
    Config::default()
      .threads(1)
      .stock(2)
      .max_isolates(100)
      .code_cache(code_cache),
  )
  .unwrap();
  hit(&rt, "warmup", HELLO, Limits::default()).await;
  let warm = one_module(big_bundle("warm"));
  if cache == Cache::Warm {
    // Two requests: code wanted again gets its cache.
    for _ in 0..2 {
      assert_eq!(
        fetch_bundle(&rt, "big", warm.clone(), Limits::default(), "/api/r7/42").await,
        200
      );
    }
    wait_for(|| rt.stats().code_cache.modules >= 1).await;
  }
  let mut times = Vec::with_capacity(n);
  for i in 0..n {
    let (name, bundle) = match cache {
      Cache::Warm => {
        rt.evict(&WorkerKey::new("big", "v1"));
        ("big".to_string(), warm.clone())
      }
      _ => {
        let name = format!("big-{i}");
        let bundle = one_module(big_bundle(&name));
        (name, bundle)
      }
    };
    wait_for(|| rt.stats().stock >= 2).await;
    let start = Instant::now();
    assert_eq!(
      fetch_bundle(&rt, &name, bundle, Limits::default(), "/api/r7/42").await,
      200
    );
    times.push(start.elapsed().as_secs_f64() * 1000.0);
  }
  let mut size = 0;
  if cache == Cache::Warm {
    let stats = rt.stats().code_cache;
    assert_eq!(stats.rejections, 0, "V8 refused a cache it made");
    // The hello warm-up is under 1 KiB: it has none.
    size = stats.memory;
  }
  let (p50, p99) = p50_p99(times);
  (p50, p99, size)
}

/// RSS per worker (MiB) of `n` workers, each its own version of the 1 MB
/// bundle, loaded and served once on a node that keeps their bundles, as
/// an edge keeps every routed version's. No code caches: they are the
/// node's, not the workers'.
async fn big_rss(n: usize) -> f64 {
  let rt = Runtime::new(
    Config::default()
      .threads(1)
      .stock(0)
      .max_isolates(n + 10)
      .code_cache(CodeCacheConfig::disabled()),
  )
  .unwrap();
  hit(&rt, "warmup", HELLO, Limits::default()).await;
  let base = rss();
  for i in 0..n {
    let name = format!("big-{i}");
    let bundle = one_module(big_bundle(&name));
    assert_eq!(
      fetch_bundle(&rt, &name, bundle, Limits::default(), "/api/r7/42").await,
      200
    );
  }
  (rss() - base) as f64 / n as f64 / (1 << 20) as f64
}

/// RSS per worker of `n` hello workers (over the RSS before them): just
/// loaded; after traffic (`rounds` requests each, round-robin with 50 in
/// flight, as the harness's `serve` cell sends them), which grows each
/// isolate's young generation and compiled code; and after they have been
/// idle past `idle_trim`, when the runtime gives that memory back.
async fn traffic_rss(n: usize, rounds: usize, idle_trim: Duration) -> [f64; 3] {
  let rt = Runtime::new(Config::default().threads(1).stock(0).max_isolates(n + 10)).unwrap();
  hit(&rt, "warmup", HELLO, Limits::default()).await;
  let base = rss();
  let per = |now: u64| now.saturating_sub(base) as f64 / n as f64 / (1 << 20) as f64;
  let bundle = one_module(Bytes::from_static(HELLO.as_bytes()));
  let send = |i: usize| {
    let (rt, bundle) = (rt.clone(), bundle.clone());
    async move {
      let name = format!("tenant-{}", i % n);
      let config = WorkerConfig::new(name.clone()).idle_trim(idle_trim);
      assert_eq!(fetch_config(&rt, &name, bundle, config, "/").await, 200);
    }
  };
  for i in 0..n {
    send(i).await;
  }
  let loaded = per(rss());
  let mut in_flight = tokio::task::JoinSet::new();
  for i in 0..n * rounds {
    if in_flight.len() == 50 {
      in_flight.join_next().await.unwrap().unwrap();
    }
    in_flight.spawn(send(i));
  }
  while let Some(done) = in_flight.join_next().await {
    done.unwrap();
  }
  let after = per(rss());
  // The trim waits for the idle time, then for quiet moments of the
  // thread, spaced 5 ms apart: 100 workers are done well within a second.
  tokio::time::sleep(idle_trim + Duration::from_secs(2)).await;
  [loaded, after, per(rss())]
}

/// Latencies (ms) of requests to worker `hot`, one every millisecond
/// (open loop), until `stop`. A request held up by the one before it counts
/// from when it was due, so a stall shows in every request it delays.
async fn hot_requests(rt: &Runtime, stop: &std::cell::Cell<bool>) -> Vec<f64> {
  let interval = Duration::from_millis(1);
  let mut times = Vec::new();
  let mut due = Instant::now();
  while !stop.get() {
    let behind = Instant::now() >= due;
    if !behind {
      tokio::time::sleep_until(due.into()).await;
    }
    // After a sleep, from the wake-up: timer lateness is not the node's.
    let from = if behind { due } else { Instant::now() };
    assert_eq!(hit(rt, "hot", HELLO, Limits::default()).await, 200);
    times.push(from.elapsed().as_secs_f64() * 1000.0);
    due += interval;
  }
  times
}

/// What [`churn`] measured.
struct Churn {
  quiet: (f64, f64),
  churning: (f64, f64),
  loaded: usize,
  seconds: f64,
  /// RSS (MiB) once the cap is first reached, and the most seen after.
  rss_at_cap: f64,
  rss_max: f64,
}

/// `total` never-seen workers loaded back to back on a node of two V8
/// threads capped at `cap` isolates, while worker `hot` gets a request every
/// millisecond: the hot worker's p50 / p99 alone and during the churn, and
/// RSS.
async fn churn(total: usize, cap: usize, quiet: Duration) -> Churn {
  let rt = Runtime::new(Config::default().threads(2).max_isolates(cap)).unwrap();
  assert_eq!(hit(&rt, "hot", HELLO, Limits::default()).await, 200);
  // A warm node: both threads' stocks made and warmed before the hot
  // worker is timed alone, or their milliseconds land in that window.
  wait_for(|| rt.stats().stock >= 4).await;
  tokio::time::sleep(Duration::from_millis(500)).await;
  let stop = std::cell::Cell::new(false);
  let alone = async {
    tokio::time::sleep(quiet).await;
    stop.set(true);
  };
  let (quiet_times, ()) = tokio::join!(hot_requests(&rt, &stop), alone);
  stop.set(false);
  let (mut rss_at_cap, mut rss_max) = (0u64, 0u64);
  let start = Instant::now();
  let load = async {
    for i in 0..total {
      let name = format!("churn-{i}");
      assert_eq!(
        fetch(&rt, &name, unique_worker(&name), Limits::default(), "/").await,
        200
      );
      if i + 1 >= cap {
        let now = rss();
        if rss_at_cap == 0 {
          rss_at_cap = now;
        }
        rss_max = rss_max.max(now);
      }
    }
    stop.set(true);
  };
  let (churn_times, ()) = tokio::join!(hot_requests(&rt, &stop), load);
  let mib = |b: u64| b as f64 / (1 << 20) as f64;
  Churn {
    quiet: p50_p99(quiet_times),
    churning: p50_p99(churn_times),
    loaded: total,
    seconds: start.elapsed().as_secs_f64(),
    rss_at_cap: mib(rss_at_cap),
    rss_max: mib(rss_max),
  }
}

fn print_churn(quick: bool) {
  let (total, cap) = if quick { (60, 20) } else { (10_000, 500) };
  let quiet = Duration::from_secs(if quick { 1 } else { 5 });
  let rt = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .unwrap();
  let c = rt.block_on(churn(total, cap, quiet));
  println!("| figure | value |\n|---|---|");
  println!(
    "| hot worker alone, a request every ms: p50 / p99 | {:.3} ms / {:.3} ms |",
    c.quiet.0, c.quiet.1
  );
  println!(
    "| hot worker while {} never-seen workers load back to back (cap {cap} isolates, 2 V8 threads): p50 / p99 | {:.3} ms / {:.3} ms |",
    c.loaded, c.churning.0, c.churning.1
  );
  println!(
    "| churn: {} workers loaded in | {:.1} s |",
    c.loaded, c.seconds
  );
  println!(
    "| churn: RSS when the cap is first reached / most after | {:.0} MiB / {:.0} MiB |",
    c.rss_at_cap, c.rss_max
  );
}

/// A pass whose figures need a process of their own (`--big-rss`,
/// `--traffic`): this one's RSS already holds the memory that the figures
/// before freed, which new isolates reuse without growing it.
fn print_own_process(pass: &str, quick: bool) {
  let exe = std::env::current_exe().expect("the bench knows its executable");
  let mut cmd = std::process::Command::new(exe);
  cmd.arg(pass);
  if !quick {
    cmd.arg("--bench");
  }
  let out = cmd.output().expect("the pass starts");
  assert!(out.status.success(), "the {pass} pass failed: {out:?}");
  print!("{}", String::from_utf8_lossy(&out.stdout));
}

/// The kinds of isolate `--floor` compares: beneath Isola's isolate, what
/// V8 alone and a bare deno_core runtime cost (the floor of the idle-isolate
/// and isolate-creation figures).
const FLOOR_KINDS: [(&str, &str); 3] = [
  ("v8", "V8's own isolate and context"),
  (
    "deno_core",
    "bare deno_core runtime (its snapshot, no extensions)",
  ),
  (
    "isola",
    "Isola's blank isolate (the Workers API snapshot, no worker)",
  ),
];

/// What `n` kept isolates of each of [`FLOOR_KINDS`] cost: (RSS MiB, V8
/// heap MiB, median ms to make one) per isolate. Each kind is measured in a
/// process of its own, so that memory one kind freed is not reused by the
/// next.
fn floor(n: usize) -> Vec<(f64, f64, f64)> {
  let exe = std::env::current_exe().expect("the bench knows its executable");
  FLOOR_KINDS
    .iter()
    .map(|(kind, _)| {
      let out = std::process::Command::new(&exe)
        .arg(format!("--floor={kind}"))
        .env("DENSITY_FLOOR", n.to_string())
        .output()
        .expect("the --floor pass starts");
      assert!(
        out.status.success(),
        "the --floor={kind} pass failed: {out:?}"
      );
      // deno_core's snapshot maker prints its progress on stdout too.
      let text = String::from_utf8_lossy(&out.stdout);
      let line = text
        .lines()
        .find_map(|l| l.strip_prefix("floor "))
        .unwrap_or_else(|| panic!("no figure from --floor={kind}: {text}"));
      let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
      (v[0], v[1], v[2])
    })
    .collect()
}

/// The `--floor` rows, in the bench's figure/value table.
fn print_floor(n: usize) {
  let figures = floor(n);
  let names = FLOOR_KINDS.map(|(_, name)| name).join(" / ");
  let join = |f: fn(&(f64, f64, f64)) -> f64, unit: &str| {
    figures
      .iter()
      .map(|x| format!("{:.2} {unit}", f(x)))
      .collect::<Vec<_>>()
      .join(" / ")
  };
  println!(
    "| RSS per isolate, {n} kept: {names} | {} |",
    join(|x| x.0, "MiB")
  );
  println!(
    "| V8 heap in use per isolate, {n} kept: {names} | {} |",
    join(|x| x.1, "MiB")
  );
  println!(
    "| isolate made in (median of {n}): {names} | {} |",
    join(|x| x.2, "ms")
  );
}

/// One `--floor` row: `n` isolates of `kind` made one after another and kept
/// alive, after one of them made first (V8's process-wide setup and the
/// shared read-only heap are not counted).
fn floor_kind(kind: &str, n: usize) {
  use deno_core::v8;
  use deno_core::JsRuntime;
  use deno_core::RuntimeOptions;
  assert!(
    FLOOR_KINDS.iter().any(|(k, _)| *k == kind),
    "--floor={kind}: not one of v8, deno_core, isola"
  );
  enum Made {
    // The context is declared first so that it is dropped first.
    V8 {
      _context: v8::Global<v8::Context>,
      isolate: v8::OwnedIsolate,
    },
    Deno(JsRuntime),
    Isola(isola_runtime::Isolate),
  }
  let bare: &'static [u8] = if kind == "deno_core" {
    let options = deno_core::snapshot::CreateSnapshotOptions {
      cargo_manifest_dir: env!("CARGO_MANIFEST_DIR"),
      startup_snapshot: None,
      skip_op_registration: false,
      extensions: vec![],
      extension_transpiler: None,
      with_runtime_cb: None,
    };
    let made = deno_core::snapshot::create_snapshot(options, None).expect("a bare snapshot");
    Box::leak(made.output)
  } else {
    &[]
  };
  // Initialises V8's platform the way the runtime does.
  drop(JsRuntime::new(RuntimeOptions::default()));
  let make = || match kind {
    "v8" => {
      let mut isolate = v8::Isolate::new(v8::CreateParams::default());
      let context = {
        v8::scope!(let scope, &mut isolate);
        let context = v8::Context::new(scope, Default::default());
        v8::Global::new(scope, context)
      };
      Made::V8 {
        _context: context,
        isolate,
      }
    }
    "deno_core" => Made::Deno(JsRuntime::new(RuntimeOptions {
      startup_snapshot: Some(bare),
      ..Default::default()
    })),
    _ => Made::Isola(
      isola_runtime::Isolate::new(isola_runtime::LogSink::discard()).expect("an isolate"),
    ),
  };
  let heap = |made: &mut Made| match made {
    Made::V8 { isolate, .. } => isolate.get_heap_statistics().used_heap_size() as u64,
    Made::Deno(js) => js.v8_isolate().get_heap_statistics().used_heap_size() as u64,
    Made::Isola(isolate) => isolate.memory_usage(),
  };
  let first = make();
  let base = rss();
  let mut kept = Vec::with_capacity(n);
  let mut times = Vec::with_capacity(n);
  for _ in 0..n {
    let start = Instant::now();
    kept.push(make());
    times.push(start.elapsed().as_secs_f64() * 1000.0);
  }
  let per = (rss() - base) as f64 / n as f64 / (1 << 20) as f64;
  let used: u64 = kept.iter_mut().map(heap).sum();
  times.sort_by(f64::total_cmp);
  println!(
    "floor {per:.4} {:.4} {:.4}",
    used as f64 / n as f64 / (1 << 20) as f64,
    percentile(&times, 0.5),
  );
  // V8 wants isolates it entered dropped in the reverse order of creation.
  while let Some(made) = kept.pop() {
    drop(made);
  }
  drop(first);
}

/// CPU time of the calling thread (what a bare V8 call costs, without the
/// compiler's and GC's helper threads).
fn thread_cpu() -> Duration {
  let mut ts = libc::timespec {
    tv_sec: 0,
    tv_nsec: 0,
  };
  // SAFETY: `ts` is a valid timespec for the call to fill.
  let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
  assert_eq!(rc, 0, "the thread's CPU clock");
  Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of this process's thread named `name` (the runtime's V8
/// thread), from its `schedstat`: the caller's thread, its wake-ups and
/// its channel hops are not the isolates' cost.
fn named_thread_cpu(name: &str) -> Duration {
  for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
    let dir = task.expect("a task").path();
    if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim_end() == name) {
      let stat = std::fs::read_to_string(dir.join("schedstat")).expect("schedstat");
      let ns = stat.split_whitespace().next().and_then(|n| n.parse().ok());
      return Duration::from_nanos(ns.expect("schedstat's first field"));
    }
  }
  panic!("no thread named {name}");
}

/// Measured rounds of `--switch`; each figure is their median.
const SWITCH_ROUNDS: usize = 3;

fn median(mut rounds: Vec<f64>) -> f64 {
  rounds.sort_by(f64::total_cmp);
  percentile(&rounds, 0.5)
}

fn median_of_rounds(mut round: impl FnMut() -> f64) -> f64 {
  median((0..SWITCH_ROUNDS).map(|_| round()).collect())
}

/// Calls taken in each measured round of `--switch` at `n` isolates: enough
/// for a stable mean, and at least a few rounds over every isolate.
/// (`quick`: a few, to check that the pass runs).
fn switch_calls(n: usize, quick: bool) -> usize {
  if quick {
    1_000
  } else {
    (n * 20).max(100_000)
  }
}

/// Calls that warm each isolate before the rounds: enough for V8 to
/// optimize the code each call runs.
fn switch_warmup(quick: bool) -> usize {
  if quick {
    100
  } else {
    3_000
  }
}

/// CPU µs per call of `n` bare V8 isolates (a context and a function that
/// builds a small object and string, as a handler builds its response),
/// called in turn. Each is warmed alone first, so that its function is
/// optimized, as a busy worker's is.
fn switch_v8(n: usize, quick: bool) -> f64 {
  use deno_core::v8;
  struct Bare {
    // Dropped before the isolate.
    context: v8::Global<v8::Context>,
    func: v8::Global<v8::Function>,
    isolate: v8::OwnedIsolate,
  }
  const SOURCE: &str = "(i) => ({ status: 200, body: 'Hello, world! ' + i, headers: [['content-type', 'text/plain']] })";
  let call = |bare: &mut Bare, i: i32| {
    // SAFETY: every isolate of this thread is exited between calls (see
    // below); this one is entered for the call and exited after it.
    unsafe { bare.isolate.enter() };
    {
      v8::scope!(let scope, &mut bare.isolate);
      let context = v8::Local::new(scope, &bare.context);
      let scope = &mut v8::ContextScope::new(scope, context);
      let func = v8::Local::new(scope, &bare.func);
      let recv = v8::undefined(scope).into();
      let arg = v8::Integer::new(scope, i).into();
      func.call(scope, recv, &[arg]).expect("the call returns");
      scope.perform_microtask_checkpoint();
    }
    // SAFETY: entered above, on this thread.
    unsafe { bare.isolate.exit() };
  };
  let mut all: Vec<Bare> = (0..n)
    .map(|_| {
      let mut isolate = v8::Isolate::new(v8::CreateParams::default());
      let (context, func) = {
        v8::scope!(let scope, &mut isolate);
        let context = v8::Context::new(scope, Default::default());
        let scope = &mut v8::ContextScope::new(scope, context);
        let code = v8::String::new(scope, SOURCE).unwrap();
        let script = v8::Script::compile(scope, code, None).unwrap();
        let func = v8::Local::<v8::Function>::try_from(script.run(scope).unwrap()).unwrap();
        (
          v8::Global::new(scope, context),
          v8::Global::new(scope, func),
        )
      };
      // SAFETY: a new isolate is entered; every one is exited between calls.
      unsafe { isolate.exit() };
      Bare {
        context,
        func,
        isolate,
      }
    })
    .collect();
  for bare in &mut all {
    for i in 0..switch_warmup(quick) {
      call(bare, i as i32);
    }
  }
  let calls = switch_calls(n, quick);
  let per = median_of_rounds(|| {
    let start = thread_cpu();
    for i in 0..calls {
      call(&mut all[i % n], i as i32);
    }
    (thread_cpu() - start).as_secs_f64() * 1e6 / calls as f64
  });
  // V8 drops an isolate entered, and wants them dropped in reverse order.
  while let Some(bare) = all.pop() {
    // SAFETY: entered for its drop, which exits it.
    unsafe { bare.isolate.enter() };
    drop(bare);
  }
  per
}

/// CPU µs of the V8 thread per request of `n` hello workers, requests
/// sent one at a time to each in turn.
async fn switch_isola(n: usize, quick: bool) -> f64 {
  let rt = Runtime::new(Config::default().threads(1).stock(0).max_isolates(n + 10)).unwrap();
  let bundle = one_module(Bytes::from_static(HELLO.as_bytes()));
  let names: Vec<String> = (0..n).map(|i| format!("tenant-{i}")).collect();
  let send = |i: usize| {
    let name = &names[i % n];
    // Limits far off: a slow first request (a profiler's) is no failure.
    let limits = Limits::default()
      .cpu(Duration::from_secs(10))
      .wall(Duration::from_secs(60));
    let config = WorkerConfig::new(name.clone()).limits(limits);
    fetch_config(&rt, name, bundle.clone(), config, "/")
  };
  // Warmed in turn, so that none is idle long enough to be evicted
  // meanwhile.
  for i in 0..n * switch_warmup(quick) {
    assert_eq!(send(i).await, 200);
  }
  let calls = switch_calls(n, quick);
  let mut rounds = Vec::new();
  for _ in 0..SWITCH_ROUNDS {
    let start = named_thread_cpu("isola-v8-0");
    for i in 0..calls {
      assert_eq!(send(i).await, 200);
    }
    rounds.push((named_thread_cpu("isola-v8-0") - start).as_secs_f64() * 1e6 / calls as f64);
  }
  median(rounds)
}

/// The `--switch` rows.
fn print_switch(quick: bool) {
  let counts: Vec<usize> = if quick {
    vec![1, 3]
  } else {
    std::env::var("DENSITY_SWITCH")
      .unwrap_or_else(|_| "1,10,100,1000".into())
      .split(',')
      .map(|n| {
        n.trim()
          .parse()
          .expect("DENSITY_SWITCH: numbers, comma-separated")
      })
      .collect()
  };
  // Initialises V8's platform the way the runtime does.
  drop(deno_core::JsRuntime::new(Default::default()));
  let row = |what: &str, per: Vec<f64>| {
    let cells: Vec<String> = per.iter().map(|p| format!("{p:.2} µs")).collect();
    let ns: Vec<String> = counts.iter().map(|n| n.to_string()).collect();
    println!(
      "| {what}, CPU per call with {} isolates taking turns | {} |",
      ns.join(" / "),
      cells.join(" / ")
    );
  };
  row(
    "bare V8 isolate, a small function",
    counts.iter().map(|&n| switch_v8(n, quick)).collect(),
  );
  let rt = one_worker_runtime();
  row(
    "Isola hello worker, one request at a time",
    counts
      .iter()
      .map(|&n| rt.block_on(switch_isola(n, quick)))
      .collect(),
  );
}

/// `name`'s value as a number, or `default`.
fn env_usize(name: &str, default: usize) -> usize {
  std::env::var(name)
    .ok()
    .and_then(|v| v.parse().ok())
    .unwrap_or(default)
}

/// The runtime the figures are measured from: one tokio worker thread
/// beside the node's V8 thread.
fn one_worker_runtime() -> tokio::runtime::Runtime {
  tokio::runtime::Builder::new_multi_thread()
    .worker_threads(1)
    .enable_all()
    .build()
    .unwrap()
}

/// Only the ready-stock first-request figure, over `DENSITY_FIRST` (2,000)
/// never-seen workers: long enough to profile that path on its own.
fn print_first() {
  let n = env_usize("DENSITY_FIRST", 2000);
  let rt = one_worker_runtime();
  let (p50, p99) = rt.block_on(first_request(2, n, CodeCacheConfig::default()));
  println!("| first request to an unseen worker, ready-isolate stock: p50 / p99 | {p50:.2} ms / {p99:.2} ms |");
}

async fn cpu_overshoot(n: usize) -> (f64, f64, f64) {
  let records: Arc<Mutex<Vec<InvocationRecord>>> = Arc::default();
  let sink = {
    let records = records.clone();
    MeterSink::new(move |r| records.lock().unwrap().push(r))
  };
  let rt = Runtime::new(Config::default().threads(1).meter(sink)).unwrap();
  let limits = Limits::default().cpu(Duration::from_millis(50));
  let mut walls = Vec::new();
  for i in 0..n {
    let start = Instant::now();
    assert_eq!(
      hit(&rt, &format!("spin-{i}"), SPIN, limits.clone()).await,
      503
    );
    walls.push(start.elapsed().as_secs_f64() * 1000.0);
  }
  wait_for(|| records.lock().unwrap().len() >= n).await;
  let mut over: Vec<f64> = records
    .lock()
    .unwrap()
    .iter()
    .map(|r| r.cpu_us as f64 / 1000.0 - 50.0)
    .collect();
  over.sort_by(f64::total_cmp);
  walls.sort_by(f64::total_cmp);
  (
    percentile(&over, 0.5),
    *over.last().unwrap(),
    percentile(&walls, 0.5),
  )
}

fn main() {
  // `cargo bench` passes --bench; `cargo test --benches` runs a quick pass.
  let quick = !std::env::args().any(|a| a == "--bench");
  if std::env::args().any(|a| a == "--churn") {
    print_churn(quick);
    return;
  }
  if std::env::args().any(|a| a == "--first") {
    print_first();
    return;
  }
  if std::env::args().any(|a| a == "--burst") {
    let n = env_usize("DENSITY_BURST", 200);
    let (p50, p99) = one_worker_runtime().block_on(burst(n));
    println!("| first request to an unseen worker, burst of {n} never-seen workers back to back (stock exhausted): p50 / p99 | {p50:.2} ms / {p99:.2} ms |");
    return;
  }
  if std::env::args().any(|a| a == "--big-rss") {
    let n = if quick { 3 } else { 20 };
    let per = one_worker_runtime().block_on(big_rss(n));
    println!("| RSS per worker of the 1 MB bundle (its bundle and its isolate), {n} workers | {per:.2} MiB |");
    return;
  }
  if std::env::args().any(|a| a == "--traffic") {
    // Quick: too few requests to grow a heap 1 MiB, so nothing is trimmed.
    let (n, rounds, idle) = if quick {
      (10, 20, Duration::from_millis(300))
    } else {
      let rounds = env_usize("DENSITY_ROUNDS", 1000);
      (100, rounds, Duration::from_secs(10))
    };
    let [loaded, after, idle_rss] = one_worker_runtime().block_on(traffic_rss(n, rounds, idle));
    println!("| RSS per hello worker, {n} workers: just loaded / after {rounds} requests each / then idle {} s | {loaded:.2} MiB / {after:.2} MiB / {idle_rss:.2} MiB |", idle.as_secs_f64());
    return;
  }
  if let Some(kind) = std::env::args().find_map(|a| a.strip_prefix("--floor=").map(String::from)) {
    floor_kind(&kind, env_usize("DENSITY_FLOOR", 100));
    return;
  }
  if std::env::args().any(|a| a == "--floor") {
    print_floor(env_usize("DENSITY_FLOOR", 100));
    return;
  }
  if std::env::args().any(|a| a == "--switch") {
    print_switch(quick);
    return;
  }
  if std::env::args().any(|a| a == "--big") {
    let n = env_usize("DENSITY_BIG", 400);
    let (p50, p99, _) = one_worker_runtime().block_on(first_request_big(Cache::Warm, n));
    println!("| first request to an unseen worker, 1 MB bundle, code cache warm: p50 / p99 | {p50:.2} ms / {p99:.2} ms |");
    return;
  }
  let max = env_usize("DENSITY_MAX", if quick { 120 } else { 1000 });
  // A p99 of 200 is their second worst: one stray pause decides it.
  let samples = if quick { 10 } else { 1000 };
  let rt = one_worker_runtime();
  rt.block_on(async {
    println!("| figure | value |\n|---|---|");
    for (n, per) in density(max).await {
      println!("| RSS per idle worker isolate, {n} workers | {per:.2} MiB |");
    }
    let (p50, p99) = first_request(2, samples, CodeCacheConfig::default()).await;
    println!("| first request to an unseen worker, ready-isolate stock: p50 / p99 | {p50:.2} ms / {p99:.2} ms |");
    let (p50, p99) = first_request(2, samples, CodeCacheConfig::disabled()).await;
    println!("| first request to an unseen worker, ready-isolate stock, code cache off: p50 / p99 | {p50:.2} ms / {p99:.2} ms |");
    let (p50, p99) = first_request(0, samples.min(50), CodeCacheConfig::default()).await;
    println!("| first request to an unseen worker, no stock: p50 / p99 | {p50:.2} ms / {p99:.2} ms |");
    let n = if quick { 20 } else { 200 };
    let (p50, p99) = burst(n).await;
    println!("| first request to an unseen worker, burst of {n} never-seen workers back to back (stock exhausted): p50 / p99 | {p50:.2} ms / {p99:.2} ms |");
    let big = if quick { 3 } else { 40 };
    for (cache, what) in [
      (Cache::Warm, "code cache warm (a later isolate of its version)"),
      (Cache::Cold, "code cache cold (the first isolate of its version)"),
      (Cache::Off, "no code cache"),
    ] {
      let (p50, p99, size) = first_request_big(cache, big).await;
      println!("| first request to an unseen worker, 1 MB bundle, {what}: p50 / p99 | {p50:.2} ms / {p99:.2} ms |");
      if size > 0 {
        let kib = size as f64 / 1024.0;
        println!("| V8 code cache of the 1 MB bundle | {kib:.0} KiB |");
      }
    }
    print_own_process("--big-rss", quick);
    print_own_process("--traffic", quick);
    print_own_process("--switch", quick);
    print_floor(if quick { 5 } else { 100 });
    let (over50, over_max, wall) = cpu_overshoot(if quick { 3 } else { 20 }).await;
    println!("| busy loop past a 50 ms CPU limit: median / max overrun (CPU) | {over50:.2} ms / {over_max:.2} ms |");
    println!("| busy loop: request → 503, median wall time | {wall:.1} ms |");
  });
}
