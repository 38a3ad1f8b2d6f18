//! What every process-level test shares (the edge's own tests, the
//! cross-process tests and the propagation benchmark): the real
//! `isola-control` and `isola-edge` binaries started on loopback, their log
//! read as lines and JSON events, and one small blocking HTTP client.
//!
//! The binaries are the ones cargo built next to the running test (`cargo
//! test --workspace` builds them); a missing one is a clear panic saying
//! what to build.
//!
//! Ports come from the binaries, not from guessing: an edge listens on port
//! 0 and reports each bound address in a `listening` event, which
//! [`Proc::listening`] reads.

#![forbid(unsafe_code)]

use std::io::BufRead as _;
use std::io::BufReader;
use std::io::Read as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::net::TcpStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

/// How long a process gets to print what a test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// A workspace binary built in the same profile as the running executable.
pub fn bin(name: &str) -> PathBuf {
  let exe = std::env::current_exe().expect("the test knows its path");
  // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
  let dir = exe
    .parent()
    .and_then(Path::parent)
    .expect("the test runs from a cargo target folder");
  let path = dir.join(name);
  assert!(
    path.exists(),
    "{} is missing; build it first: cargo build -p {name} (add --release for benchmarks)",
    path.display()
  );
  path
}

/// Loopback, port 0: the listener's own pick, read back from its
/// `listening` event.
const ANY_PORT: SocketAddr =
  SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A free TCP port on loopback (the OS picked it; it stays free unless
/// something else grabs it in between). Only for a binary that cannot
/// report its own port.
pub fn free_tcp() -> SocketAddr {
  std::net::TcpListener::bind("127.0.0.1:0")
    .and_then(|l| l.local_addr())
    .expect("a free port")
}

/// Writes `text` to `dir/name`, creating folders.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
  let path = dir.join(name);
  std::fs::create_dir_all(path.parent().expect("a file has a folder")).expect("mkdir");
  std::fs::write(&path, text).expect("the test folder is writable");
  path
}

/// A log event of a binary run with `--log-format json`.
#[derive(Clone, Debug)]
pub struct Event(pub serde_json::Value);

impl Event {
  /// `line` as an event, if it is a JSON object with `fields.message`.
  pub fn parse(line: &str) -> Option<Event> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    value["fields"]["message"]
      .is_string()
      .then_some(Event(value))
  }

  pub fn message(&self) -> &str {
    self.0["fields"]["message"].as_str().unwrap_or_default()
  }

  /// A field of the event (`fields.<name>`), as text.
  pub fn field(&self, name: &str) -> Option<String> {
    match &self.0["fields"][name] {
      serde_json::Value::Null => None,
      serde_json::Value::String(s) => Some(s.clone()),
      other => Some(other.to_string()),
    }
  }
}

/// A child process whose output lines (stdout and stderr) are collected;
/// killed when dropped.
pub struct Proc {
  pub child: Child,
  lines: mpsc::Receiver<String>,
  seen: Vec<String>,
}

impl Drop for Proc {
  fn drop(&mut self) {
    let _ = self.child.kill();
    let _ = self.child.wait();
  }
}

impl Proc {
  pub fn start(program: &Path, args: &[&std::ffi::OsStr]) -> Proc {
    Self::spawn(Command::new(program).args(args))
  }

  /// Starts `command` (with its environment) and collects its output.
  pub fn spawn(command: &mut Command) -> Proc {
    let mut child = command
      .stdout(Stdio::piped())
      .stderr(Stdio::piped())
      .spawn()
      .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()));
    let (tx, lines) = mpsc::channel();
    for stream in [
      Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
      Box::new(child.stderr.take().expect("piped")),
    ] {
      let tx = tx.clone();
      std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
          let _ = tx.send(line);
        }
      });
    }
    Proc {
      child,
      lines,
      seen: Vec::new(),
    }
  }

  /// Waits (up to 30 s) for an output line that `want` accepts, looking at
  /// every line since the start; returns the first such line.
  pub fn wait_line(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    if let Some(line) = self.seen.iter().find(|l| want(l)) {
      return line.clone();
    }
    loop {
      let left = deadline.saturating_duration_since(Instant::now());
      match self.lines.recv_timeout(left) {
        Ok(line) => {
          self.seen.push(line.clone());
          if want(&line) {
            return line;
          }
        }
        Err(_) => panic!("no output line {what}; saw {:#?}", self.seen),
      }
    }
  }

  /// Waits for an output line containing `needle` (worker console output,
  /// or a message of a binary not under test).
  pub fn expect_line(&mut self, needle: &str) -> String {
    self.wait_line(&format!("containing {needle:?}"), |l| l.contains(needle))
  }

  /// Waits for a JSON log event whose message is exactly `message` and
  /// that `want` accepts.
  pub fn expect_event_where(&mut self, message: &str, want: impl Fn(&Event) -> bool) -> Event {
    let line = self.wait_line(&format!("with the event {message:?}"), |l| {
      Event::parse(l).is_some_and(|e| e.message() == message && want(&e))
    });
    Event::parse(&line).expect("it parsed a moment ago")
  }

  /// Waits for a JSON log event whose message is exactly `message`.
  pub fn expect_event(&mut self, message: &str) -> Event {
    self.expect_event_where(message, |_| true)
  }

  /// The address of `listener` (`http`, `https`, `admin`, ...) from the
  /// binary's `listening` event.
  pub fn listening(&mut self, listener: &str) -> SocketAddr {
    let event = self.expect_event_where("listening", |e| {
      e.field("listener").as_deref() == Some(listener)
    });
    let addr = event.field("addr").expect("a listening event has an addr");
    addr
      .trim_start_matches("http://")
      .parse()
      .unwrap_or_else(|e| panic!("{addr} is not an address: {e}"))
  }

  /// Every line printed so far, for a failure message.
  pub fn output(&mut self) -> String {
    while let Ok(line) = self.lines.try_recv() {
      self.seen.push(line);
    }
    self.seen.join("\n")
  }

  /// Sends `signal` (`HUP`, `TERM`, ...) with kill(1).
  pub fn signal(&self, signal: &str) {
    let ok = Command::new("kill")
      .args([&format!("-{signal}"), &self.child.id().to_string()])
      .status()
      .expect("kill runs")
      .success();
    assert!(ok, "kill -{signal}");
  }

  /// Kills the process at once (SIGKILL): no chance to flush or say bye.
  pub fn kill(mut self) {
    let _ = self.child.kill();
    let _ = self.child.wait();
  }

  /// Asks the process to stop (SIGTERM) and waits for it.
  pub fn terminate(mut self) {
    self.signal("TERM");
    let _ = self.child.wait();
  }
}

/// A response: status, headers and body.
#[derive(Debug)]
pub struct Response {
  pub status: u16,
  /// Names lowercased, in the order received; a repeated header repeats.
  pub headers: Vec<(String, String)>,
  pub body: Vec<u8>,
}

impl Response {
  pub fn text(&self) -> String {
    String::from_utf8_lossy(&self.body).into_owned()
  }

  pub fn json(&self) -> serde_json::Value {
    serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
  }

  /// Every value of header `name`.
  pub fn header_all(&self, name: &str) -> Vec<&str> {
    let name = name.to_ascii_lowercase();
    self
      .headers
      .iter()
      .filter(|(k, _)| *k == name)
      .map(|(_, v)| v.as_str())
      .collect()
  }

  /// The first value of header `name`.
  pub fn header(&self, name: &str) -> Option<&str> {
    self.header_all(name).into_iter().next()
  }
}

/// One HTTP/1.1 request with `Connection: close`; `None` when the server
/// could not be reached or answered nothing. A chunked body is decoded.
pub fn http(
  addr: SocketAddr,
  method: &str,
  host: &str,
  path: &str,
  headers: &[(&str, &str)],
  body: &[u8],
) -> Option<Response> {
  let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
  stream.set_read_timeout(Some(WAIT)).ok()?;
  let mut head = format!(
    "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
    body.len()
  );
  for (k, v) in headers {
    head.push_str(&format!("{k}: {v}\r\n"));
  }
  head.push_str("\r\n");
  stream.write_all(head.as_bytes()).ok()?;
  stream.write_all(body).ok()?;
  let mut raw = Vec::new();
  stream.read_to_end(&mut raw).ok()?;
  let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
  let head = std::str::from_utf8(&raw[..split]).ok()?;
  let mut lines = head.split("\r\n");
  let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
  let headers: Vec<(String, String)> = lines
    .filter_map(|l| l.split_once(':'))
    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
    .collect();
  let mut body = raw[split + 4..].to_vec();
  let chunked = headers
    .iter()
    .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
  if chunked {
    body = dechunk(&body);
  }
  Some(Response {
    status,
    headers,
    body,
  })
}

/// GET `path` from `addr` with `Host: host`.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Option<Response> {
  http(addr, "GET", host, path, &[], b"")
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
  let mut out = Vec::new();
  while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
    let size = std::str::from_utf8(&data[..eol])
      .ok()
      .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
      .unwrap_or(0);
    if size == 0 || data.len() < eol + 2 + size {
      break;
    }
    out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
    data = &data[(eol + 4 + size).min(data.len())..];
  }
  out
}

/// A `multipart/form-data` body: `(part name, content type, bytes)`.
pub fn multipart(parts: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
  let boundary = "isola-test-boundary-7d3f9a";
  let mut body = Vec::new();
  for (name, content_type, bytes) in parts {
    body.extend_from_slice(
      format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\
         Content-Type: {content_type}\r\n\r\n"
      )
      .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(b"\r\n");
  }
  body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
  (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Polls `probe` every 20 ms until it returns `Some`, for up to `limit`.
pub fn poll<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
  let start = Instant::now();
  loop {
    if let Some(found) = probe() {
      return Some(found);
    }
    if start.elapsed() >= limit {
      return None;
    }
    std::thread::sleep(Duration::from_millis(20));
  }
}

/// A running `isola-edge` (`serve` or `dev`) with JSON logs, and its
/// addresses as it reported them.
pub struct Edge {
  pub proc: Proc,
  pub http: SocketAddr,
}

impl Edge {
  /// `isola-edge serve --config <config>`; waits for its `http` listener.
  pub fn serve(bin: &Path, config: &Path) -> Edge {
    Edge::start(
      bin,
      &["serve".as_ref(), "--config".as_ref(), config.as_os_str()],
    )
  }

  /// `isola-edge <args> --log-format json`; waits for its `http` listener.
  pub fn start(bin: &Path, args: &[&std::ffi::OsStr]) -> Edge {
    let mut all: Vec<&std::ffi::OsStr> = vec!["--log-format".as_ref(), "json".as_ref()];
    all.extend_from_slice(args);
    let mut proc = Proc::start(bin, &all);
    let http = proc.listening("http");
    Edge { proc, http }
  }

  /// `GET /admin/state` on the admin listener.
  pub fn state(&mut self) -> serde_json::Value {
    let admin = self.proc.listening("admin");
    let r = get(admin, "admin", "/admin/state").expect("the admin listener answers");
    assert_eq!(r.status, 200, "/admin/state: {}", r.text());
    r.json()
  }

  /// Polls `/admin/state` until `want` accepts it (up to 30 s); returns it.
  pub fn wait_state(
    &mut self,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
  ) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let found = poll(WAIT, || {
      last = self.state();
      want(&last).then(|| last.clone())
    });
    found.unwrap_or_else(|| panic!("the node never reached: {what}; last state {last:#}"))
  }
}

/// The versions `worker` serves in an `/admin/state` answer, as
/// `(version, percentage)`.
pub fn versions_of(state: &serde_json::Value, worker: &str) -> Vec<(String, u64)> {
  state["workers"][worker]["versions"]
    .as_array()
    .map(|vs| {
      vs.iter()
        .map(|v| {
          (
            v["version"].as_str().unwrap_or_default().to_string(),
            v["percentage"].as_u64().unwrap_or_default(),
          )
        })
        .collect()
    })
    .unwrap_or_default()
}

/// A control plane: its data folder, addresses and admin token.
pub struct Control {
  pub dir: PathBuf,
  pub api: SocketAddr,
  pub quic: SocketAddr,
  pub token: String,
  pub proc: Option<Proc>,
  /// More arguments for `serve` (e.g. a test clock).
  pub serve_args: Vec<String>,
  /// More environment variables for `serve` (e.g. AWS settings).
  pub serve_env: Vec<(String, String)>,
}

/// Runs a one-shot `isola-control` command (`init`, `enroll-edge`) to its
/// end; it must succeed.
fn run_control(command: &mut Command) {
  let out = command.output().expect("isola-control runs");
  assert!(
    out.status.success(),
    "{:?} failed: {}",
    command.get_args().collect::<Vec<_>>(),
    String::from_utf8_lossy(&out.stderr)
  );
}

impl Control {
  /// `isola-control init` in `dir`, then `serve` on free ports.
  pub fn init_and_start(dir: &Path) -> Control {
    Self::init_and_start_with(dir, &[])
  }

  /// [`Control::init_and_start`] with more arguments for `serve`.
  pub fn init_and_start_with(dir: &Path, serve_args: &[&str]) -> Control {
    Self::init_and_start_env(dir, serve_args, &[])
  }

  /// [`Control::init_and_start_with`] with environment variables for `serve`.
  /// `init` sees `env` too (a `--database` in `ISOLA_DATABASE`).
  pub fn init_and_start_env(dir: &Path, serve_args: &[&str], env: &[(&str, &str)]) -> Control {
    run_control(
      Command::new(bin("isola-control"))
        .envs(env.iter().copied())
        .args(["init", "--data-dir"])
        .arg(dir),
    );
    Self::serve_initialised(
      dir,
      serve_args.iter().map(|s| s.to_string()).collect(),
      env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
  }

  /// `serve` on free ports in `dir`, which `init` made (its admin token is
  /// this control plane's token).
  fn serve_initialised(
    dir: &Path,
    serve_args: Vec<String>,
    serve_env: Vec<(String, String)>,
  ) -> Control {
    let token = std::fs::read_to_string(dir.join("admin-token"))
      .expect("init writes admin-token")
      .trim()
      .to_string();
    let mut control = Control {
      dir: dir.to_path_buf(),
      // Port 0: the OS picks and the control plane reports it. A port
      // found free beforehand was at times taken by another test's
      // connection before `serve` bound it.
      api: ANY_PORT,
      quic: ANY_PORT,
      token,
      proc: None,
      serve_args,
      serve_env,
    };
    control.start();
    control
  }

  /// Starts `serve` (again) on the same data folder and addresses (port 0
  /// the first time), and waits for its `listening` events for the API and
  /// QUIC, whose addresses a restart keeps. While the control plane was
  /// down another test's connection may have taken one of its ports for a
  /// moment: a restart that finds one in use tries again for a few seconds.
  pub fn start(&mut self) {
    let program = bin("isola-control");
    let (api, quic) = (self.api.to_string(), self.quic.to_string());
    let mut tries = 0;
    let mut proc = loop {
      let mut proc = Proc::spawn(
        Command::new(&program)
          .args(["--log-format", "json", "serve", "--data-dir"])
          .arg(&self.dir)
          .args(["--api", &api, "--quic", &quic])
          .args(&self.serve_args)
          .envs(self.serve_env.iter().map(|(k, v)| (k, v))),
      );
      let line = proc.wait_line("with the API's listening event", |l| {
        l.contains("Address already in use")
          || Event::parse(l).is_some_and(|e| {
            e.message() == "listening" && e.field("listener").as_deref() == Some("api")
          })
      });
      tries += 1;
      if !line.contains("Address already in use") || tries == 20 {
        break proc;
      }
      proc.kill();
      std::thread::sleep(Duration::from_millis(250));
    };
    self.api = proc.listening("api");
    self.quic = proc.listening("quic");
    self.proc = Some(proc);
  }

  /// The address of this run's `listener` (`dns`, ...), from its
  /// `listening` event.
  pub fn listening(&mut self, listener: &str) -> SocketAddr {
    self
      .proc
      .as_mut()
      .expect("the control plane runs")
      .listening(listener)
  }

  /// `isola-control init --database URL` in `dir` (a PostgreSQL store),
  /// then `serve` on it on free ports.
  pub fn init_postgres(dir: &Path, url: &str) -> Control {
    Self::init_and_start_env(dir, &[], &[("ISOLA_DATABASE", url)])
  }

  /// Another replica of this control plane: its data folder copied to
  /// `dir` (CA, server certificate, secrets key), the same database, its
  /// own ports.
  pub fn replica(&self, dir: &Path) -> Control {
    let status = Command::new("cp")
      .arg("-a")
      .arg(&self.dir)
      .arg(dir)
      .status()
      .expect("cp runs");
    assert!(status.success(), "cannot copy {}", self.dir.display());
    Self::serve_initialised(dir, self.serve_args.clone(), self.serve_env.clone())
  }

  /// `enroll-edge`, returning the edge's folder with its `edge.toml`
  /// completed by a `[server]` section whose listeners take port 0.
  pub fn enroll(&self, name: &str, out: &Path, usage_interval_ms: u64) -> EdgeSetup {
    self.enroll_to(name, out, usage_interval_ms, &[self.quic])
  }

  /// [`Control::enroll`] for an edge that follows the control plane at
  /// `addresses`, in that order (its replicas).
  pub fn enroll_to(
    &self,
    name: &str,
    out: &Path,
    usage_interval_ms: u64,
    addresses: &[SocketAddr],
  ) -> EdgeSetup {
    let mut command = Command::new(bin("isola-control"));
    command
      .args(["enroll-edge", "--data-dir"])
      .arg(&self.dir)
      .args(["--name", name, "--out"])
      .arg(out)
      .envs(self.serve_env.iter().map(|(k, v)| (k, v)));
    for a in addresses {
      command.args(["--control-address", &a.to_string()]);
    }
    run_control(&mut command);
    let config = out.join("edge.toml");
    let text = std::fs::read_to_string(&config).expect("enroll-edge writes edge.toml");
    let text = text.replacen(
      "[control]\n",
      &format!("[control]\nusage_interval_ms = {usage_interval_ms}\n"),
      1,
    );
    std::fs::write(
      &config,
      format!("{text}\n[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nthreads = 1\n"),
    )
    .expect("edge.toml is writable");
    EdgeSetup {
      config,
      addrs: Arc::default(),
    }
  }

  /// An API call with the admin token.
  pub fn api(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Response {
    let token = self.token.clone();
    self.api_as(&token, method, path, body)
  }

  /// An API call with `token`.
  pub fn api_as(
    &self,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
  ) -> Response {
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    http(
      self.api,
      method,
      "control",
      path,
      &[
        ("Authorization", &auth),
        ("Content-Type", "application/json"),
      ],
      body.as_bytes(),
    )
    .unwrap_or_else(|| panic!("the API did not answer {method} {path}"))
  }

  /// Uploads a one-module worker version; returns its id.
  pub fn upload(&self, worker: &str, source: &str, vars: serde_json::Value) -> String {
    self.upload_with(
      worker,
      source,
      serde_json::json!({ "main_module": "worker.js", "vars": vars }),
    )
  }

  /// Uploads a one-module worker version with `metadata` (bindings, limits);
  /// returns its id.
  pub fn upload_with(&self, worker: &str, source: &str, metadata: serde_json::Value) -> String {
    let metadata = metadata.to_string();
    let (content_type, body) = multipart(&[
      ("metadata", "application/json", metadata.as_bytes()),
      (
        "worker.js",
        "application/javascript+module",
        source.as_bytes(),
      ),
    ]);
    let auth = format!("Bearer {}", self.token);
    let r = http(
      self.api,
      "POST",
      "control",
      &format!("/v1/workers/{worker}/versions"),
      &[("Authorization", &auth), ("Content-Type", &content_type)],
      &body,
    )
    .expect("the API answers an upload");
    assert_eq!(r.status, 201, "upload: {}", r.text());
    r.json()["id"].as_str().expect("an id").to_string()
  }

  /// Routes `pattern` to `worker`.
  pub fn route(&self, pattern: &str, worker: &str) {
    let r = self.api(
      "POST",
      "/v1/routes",
      Some(serde_json::json!({ "pattern": pattern, "worker": worker })),
    );
    assert_eq!(r.status, 201, "route: {}", r.text());
  }

  /// Deploys `version` of `worker` at 100 %.
  pub fn deploy(&self, worker: &str, version: &str) {
    let r = self.api(
      "POST",
      &format!("/v1/workers/{worker}/deployments"),
      Some(serde_json::json!({ "versions": [{ "id": version, "percentage": 100 }] })),
    );
    assert_eq!(r.status, 201, "deploy: {}", r.text());
  }
}

/// A throwaway PostgreSQL server (Debian's packages, started by
/// `tests/support/postgres.sh`), stopped and removed on drop.
pub struct Postgres {
  dir: PathBuf,
  /// `postgres://postgres@127.0.0.1:PORT`, without a database.
  pub server: String,
}

impl Postgres {
  /// Starts one; `None` (with the reason on stderr) where the server's
  /// binaries are missing and cannot be installed.
  pub fn start() -> Option<Postgres> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/postgres.sh");
    let dir = std::env::temp_dir().join(format!(
      "isola-pg-{}-{}",
      std::process::id(),
      NEXT_PG.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let out = Command::new(&script)
      .arg("start")
      .arg(&dir)
      .output()
      .expect("postgres.sh runs");
    if !out.status.success() {
      eprintln!(
        "no PostgreSQL server: {}",
        String::from_utf8_lossy(&out.stderr)
      );
      let _ = std::fs::remove_dir_all(&dir);
      return None;
    }
    let server = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some(Postgres { dir, server })
  }

  /// The URL of its `postgres` database.
  pub fn url(&self) -> String {
    format!("{}/postgres", self.server)
  }
}

static NEXT_PG: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for Postgres {
  fn drop(&mut self) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/postgres.sh");
    let _ = Command::new(script).arg("stop").arg(&self.dir).output();
    let _ = std::fs::remove_dir_all(&self.dir);
  }
}

/// The addresses an edge reported: `(http, admin)`.
type Reported = Arc<Mutex<Option<(SocketAddr, SocketAddr)>>>;

/// An enrolled edge's config file, and the addresses its latest start
/// reported (shared by clones, so pollers follow a restarted edge).
#[derive(Clone, Debug)]
pub struct EdgeSetup {
  pub config: PathBuf,
  addrs: Reported,
}

impl EdgeSetup {
  /// Starts `isola-edge serve` on this config; returns once it listens.
  pub fn start(&self) -> Proc {
    let mut edge = Edge::serve(&bin("isola-edge"), &self.config);
    let admin = edge.proc.listening("admin");
    *self.addrs.lock().unwrap_or_else(|e| e.into_inner()) = Some((edge.http, admin));
    edge.proc
  }

  fn addrs(&self) -> (SocketAddr, SocketAddr) {
    self
      .addrs
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .expect("the edge was started")
  }

  /// The HTTP address of the latest start.
  pub fn http(&self) -> SocketAddr {
    self.addrs().0
  }

  /// `GET /admin/state` of the latest start; `None` if it does not answer.
  pub fn state(&self) -> Option<serde_json::Value> {
    let r = get(self.addrs().1, "admin", "/admin/state")?;
    (r.status == 200).then(|| r.json())
  }

  /// GET `path` on `host`, as a client of this edge would.
  pub fn get(&self, host: &str, path: &str) -> Option<Response> {
    get(self.http(), host, path)
  }

  /// Polls `/admin/state` until the edge has applied control revision
  /// `revision` (applied is also saved: a restart serves it); false after
  /// `limit`.
  pub fn wait_revision(&self, revision: u64, limit: Duration) -> bool {
    poll(limit, || {
      let state = self.state()?;
      (state["control_revision"].as_u64() >= Some(revision)).then_some(())
    })
    .is_some()
  }

  /// Polls until `host/` answers 200 with a body starting with `prefix`;
  /// returns how long that took, or `None` after `limit`.
  pub fn wait_for(&self, host: &str, prefix: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
      if let Some(r) = self.get(host, "/") {
        if r.status == 200 && r.body.starts_with(prefix.as_bytes()) {
          return Some(start.elapsed());
        }
      }
      std::thread::sleep(Duration::from_millis(2));
    }
    None
  }
}

/// A WebSocket client just big enough for a tail: it reads the server's
/// (unmasked) text frames and never sends any.
pub struct TailClient {
  stream: TcpStream,
}

impl TailClient {
  pub fn open(control: &Control, worker: &str, query: &str) -> TailClient {
    let mut stream = TcpStream::connect(control.api).expect("the API accepts connections");
    stream
      .set_read_timeout(Some(Duration::from_secs(30)))
      .unwrap();
    write!(
      stream,
      "GET /v1/workers/{worker}/tail{query} HTTP/1.1\r\nHost: control\r\n\
       Authorization: Bearer {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
      control.token
    )
    .unwrap();
    // The answer's head, byte by byte so no frame is read past it.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
      stream
        .read_exact(&mut byte)
        .expect("the upgrade is answered");
      head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(
      head.starts_with("HTTP/1.1 101"),
      "the tail was not opened: {head}"
    );
    TailClient { stream }
  }

  /// The next text message as JSON; `None` once the server closes.
  pub fn next_event(&mut self) -> Option<serde_json::Value> {
    loop {
      let mut h = [0u8; 2];
      self.stream.read_exact(&mut h).ok()?;
      let opcode = h[0] & 0x0f;
      let mut len = u64::from(h[1] & 0x7f);
      if len == 126 {
        let mut b = [0u8; 2];
        self.stream.read_exact(&mut b).ok()?;
        len = u64::from(u16::from_be_bytes(b));
      } else if len == 127 {
        let mut b = [0u8; 8];
        self.stream.read_exact(&mut b).ok()?;
        len = u64::from_be_bytes(b);
      }
      let mut payload = vec![0u8; usize::try_from(len).unwrap()];
      self.stream.read_exact(&mut payload).ok()?;
      match opcode {
        0x1 => return Some(serde_json::from_slice(&payload).expect("a JSON message")),
        0x8 => return None,
        _ => {}
      }
    }
  }
}

/// A MaxMind-format database (IPv4, 24-bit records) placing each network
/// `(address, prefix, latitude, longitude)` the way GeoIP2 City records do
/// (`location.latitude`, `location.longitude`); built here so tests never
/// need a downloaded database. Networks must not nest.
pub fn mmdb(networks: &[(std::net::Ipv4Addr, u8, f64, f64)]) -> Vec<u8> {
  #[derive(Clone, Copy)]
  enum Rec {
    Empty,
    Node(u32),
    Data(u32),
  }
  fn string(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 29);
    out.push((2 << 5) | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
  }
  fn double(out: &mut Vec<u8>, v: f64) {
    out.push((3 << 5) | 8);
    out.extend_from_slice(&v.to_be_bytes());
  }
  fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    let n = (8 - skip) as u8;
    if kind <= 7 {
      out.push((kind << 5) | n);
    } else {
      out.extend_from_slice(&[n, kind - 7]);
    }
    out.extend_from_slice(&bytes[skip..]);
  }
  let mut data = Vec::new();
  let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty; 2]];
  for &(ip, prefix, lat, lon) in networks {
    let offset = data.len() as u32;
    // {"location": {"latitude": lat, "longitude": lon}}
    data.push((7 << 5) | 1);
    string(&mut data, "location");
    data.push((7 << 5) | 2);
    string(&mut data, "latitude");
    double(&mut data, lat);
    string(&mut data, "longitude");
    double(&mut data, lon);
    let bits = u32::from(ip);
    let mut node = 0usize;
    for i in 0..prefix {
      let bit = ((bits >> (31 - i)) & 1) as usize;
      if i + 1 == prefix {
        nodes[node][bit] = Rec::Data(offset);
        break;
      }
      node = match nodes[node][bit] {
        Rec::Node(n) => n as usize,
        Rec::Empty => {
          nodes.push([Rec::Empty; 2]);
          let n = nodes.len() - 1;
          nodes[node][bit] = Rec::Node(n as u32);
          n
        }
        Rec::Data(_) => panic!("networks must not nest"),
      };
    }
  }
  let count = nodes.len() as u32;
  let mut out = Vec::new();
  for pair in &nodes {
    for rec in pair {
      let value = match *rec {
        Rec::Empty => count,
        Rec::Node(n) => n,
        Rec::Data(offset) => count + 16 + offset,
      };
      out.extend_from_slice(&value.to_be_bytes()[1..]);
    }
  }
  out.extend_from_slice(&[0; 16]);
  out.extend_from_slice(&data);
  out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
  out.push((7 << 5) | 9);
  string(&mut out, "node_count");
  uint(&mut out, 6, u64::from(count));
  string(&mut out, "record_size");
  uint(&mut out, 5, 24);
  string(&mut out, "ip_version");
  uint(&mut out, 5, 4);
  string(&mut out, "database_type");
  string(&mut out, "Isola-Test-City");
  string(&mut out, "languages");
  out.extend_from_slice(&[0, 11 - 7]);
  string(&mut out, "binary_format_major_version");
  uint(&mut out, 5, 2);
  string(&mut out, "binary_format_minor_version");
  uint(&mut out, 5, 0);
  string(&mut out, "build_epoch");
  uint(&mut out, 9, 1);
  string(&mut out, "description");
  out.push(7 << 5);
  out
}

/// One DNS query over UDP from `socket` to `server`, as a resolver with
/// client `subnet` (ECS) would send it; the answer, or `None` after 2 s.
pub fn dns_query(
  socket: &std::net::UdpSocket,
  server: SocketAddr,
  id: u16,
  name: &str,
  qtype: hickory_proto::rr::RecordType,
  subnet: Option<&str>,
) -> Option<hickory_proto::op::Message> {
  let packet = dns_packet(id, name, qtype, subnet);
  socket
    .set_read_timeout(Some(Duration::from_secs(2)))
    .expect("a timeout can be set");
  socket.send_to(&packet, server).ok()?;
  let mut buf = [0u8; 4096];
  loop {
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    let answer = hickory_proto::op::Message::from_vec(&buf[..len]).ok()?;
    // A late answer to an earlier query is skipped.
    if answer.id() == id {
      return Some(answer);
    }
  }
}

/// A query packet with an optional ECS option (`"198.51.100.0/24"`).
pub fn dns_packet(
  id: u16,
  name: &str,
  qtype: hickory_proto::rr::RecordType,
  subnet: Option<&str>,
) -> Vec<u8> {
  use hickory_proto::op;
  use hickory_proto::rr::rdata::opt::EdnsOption;
  let mut m = op::Message::new();
  m.set_id(id)
    .set_message_type(op::MessageType::Query)
    .set_op_code(op::OpCode::Query);
  m.add_query(op::Query::query(
    hickory_proto::rr::Name::from_ascii(name).expect("a valid name"),
    qtype,
  ));
  if let Some(subnet) = subnet {
    let mut edns = op::Edns::new();
    edns.set_max_payload(1232);
    edns
      .options_mut()
      .insert(EdnsOption::Subnet(subnet.parse().expect("a subnet")));
    m.set_edns(edns);
  }
  m.to_vec().expect("a query encodes")
}

/// The addresses of the A and AAAA records of `answer`, in order.
pub fn dns_addresses(answer: &hickory_proto::op::Message) -> Vec<std::net::IpAddr> {
  use hickory_proto::rr::RData;
  answer
    .answers()
    .iter()
    .filter_map(|r| match r.data() {
      RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
      RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
      _ => None,
    })
    .collect()
}
