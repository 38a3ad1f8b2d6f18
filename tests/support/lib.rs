//! What the cross-process tests and the propagation benchmark share: the
//! real `isola-control` and `isola-edge` binaries started on loopback, and a
//! small blocking HTTP client to drive them.
//!
//! The binaries are the ones cargo built next to the running test (`cargo
//! test --workspace` builds them); a missing one is a clear panic saying
//! what to build.

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
use std::time::Duration;
use std::time::Instant;

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

/// A free TCP port on loopback (the OS picked it; it stays free unless
/// something else grabs it in between).
pub fn free_tcp() -> SocketAddr {
  std::net::TcpListener::bind("127.0.0.1:0")
    .and_then(|l| l.local_addr())
    .expect("a free port")
}

/// A free UDP port on loopback.
pub fn free_udp() -> SocketAddr {
  std::net::UdpSocket::bind("127.0.0.1:0")
    .and_then(|s| s.local_addr())
    .expect("a free port")
}

/// A child process whose output lines are collected; killed when dropped.
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
    let mut child = Command::new(program)
      .args(args)
      .stdout(Stdio::piped())
      .stderr(Stdio::piped())
      .spawn()
      .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
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

  /// Waits (up to 30 s) for an output line containing `needle`.
  pub fn expect_line(&mut self, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
      return line.clone();
    }
    loop {
      let left = deadline.saturating_duration_since(Instant::now());
      match self.lines.recv_timeout(left) {
        Ok(line) => {
          self.seen.push(line.clone());
          if line.contains(needle) {
            return line;
          }
        }
        Err(_) => panic!("no output line containing {needle:?}; saw {:#?}", self.seen),
      }
    }
  }

  /// Every line printed so far, for a failure message.
  pub fn output(&mut self) -> String {
    while let Ok(line) = self.lines.try_recv() {
      self.seen.push(line);
    }
    self.seen.join("\n")
  }

  /// Kills the process at once (SIGKILL): no chance to flush or say bye.
  pub fn kill(mut self) {
    let _ = self.child.kill();
    let _ = self.child.wait();
  }

  /// Asks the process to stop (SIGTERM) and waits for it.
  pub fn terminate(mut self) {
    let _ = Command::new("kill")
      .args(["-TERM", &self.child.id().to_string()])
      .status();
    let _ = self.child.wait();
  }
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
  pub status: u16,
  pub body: Vec<u8>,
}

impl Response {
  pub fn text(&self) -> String {
    String::from_utf8_lossy(&self.body).into_owned()
  }

  pub fn json(&self) -> serde_json::Value {
    serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
  }
}

/// One HTTP/1.1 request with `Connection: close`; `None` when the server
/// could not be reached or answered nothing.
pub fn http(
  addr: SocketAddr,
  method: &str,
  host: &str,
  path: &str,
  headers: &[(&str, &str)],
  body: &[u8],
) -> Option<Response> {
  let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
  stream
    .set_read_timeout(Some(Duration::from_secs(30)))
    .ok()?;
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
  let status = head.split(' ').nth(1)?.parse().ok()?;
  let mut body = raw[split + 4..].to_vec();
  if head
    .to_ascii_lowercase()
    .contains("transfer-encoding: chunked")
  {
    body = dechunk(&body);
  }
  Some(Response { status, body })
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

/// A control plane: its data folder, addresses and admin token.
pub struct Control {
  pub dir: PathBuf,
  pub api: SocketAddr,
  pub quic: SocketAddr,
  pub token: String,
  pub proc: Option<Proc>,
}

impl Control {
  /// `isola-control init` in `dir`, then `serve` on free ports.
  pub fn init_and_start(dir: &Path) -> Control {
    let out = Command::new(bin("isola-control"))
      .args(["init", "--data-dir"])
      .arg(dir)
      .output()
      .expect("isola-control init runs");
    assert!(
      out.status.success(),
      "init failed: {}",
      String::from_utf8_lossy(&out.stderr)
    );
    let token = std::fs::read_to_string(dir.join("admin-token"))
      .expect("init writes admin-token")
      .trim()
      .to_string();
    let mut control = Control {
      dir: dir.to_path_buf(),
      api: free_tcp(),
      quic: free_udp(),
      token,
      proc: None,
    };
    control.start();
    control
  }

  /// Starts `serve` (again) on the same data folder and addresses.
  pub fn start(&mut self) {
    let mut proc = Proc::start(
      &bin("isola-control"),
      &[
        "serve".as_ref(),
        "--data-dir".as_ref(),
        self.dir.as_os_str(),
        "--api".as_ref(),
        self.api.to_string().as_ref(),
        "--quic".as_ref(),
        self.quic.to_string().as_ref(),
      ],
    );
    proc.expect_line("isola-control serve: api");
    self.proc = Some(proc);
  }

  /// `enroll-edge`, returning the edge's folder with its `edge.toml`
  /// completed by a `[server]` section on free ports.
  pub fn enroll(&self, name: &str, out: &Path, usage_interval_ms: u64) -> EdgeSetup {
    let result = Command::new(bin("isola-control"))
      .args(["enroll-edge", "--data-dir"])
      .arg(&self.dir)
      .args(["--name", name, "--out"])
      .arg(out)
      .args(["--control-address", &self.quic.to_string()])
      .output()
      .expect("isola-control enroll-edge runs");
    assert!(
      result.status.success(),
      "enroll-edge failed: {}",
      String::from_utf8_lossy(&result.stderr)
    );
    let config = out.join("edge.toml");
    let text = std::fs::read_to_string(&config).expect("enroll-edge writes edge.toml");
    let (http, admin) = (free_tcp(), free_tcp());
    let text = text.replacen(
      "[control]\n",
      &format!("[control]\nusage_interval_ms = {usage_interval_ms}\n"),
      1,
    );
    std::fs::write(
      &config,
      format!("{text}\n[server]\nlisten = \"{http}\"\nadmin = \"{admin}\"\nthreads = 1\n"),
    )
    .expect("edge.toml is writable");
    EdgeSetup { config, http }
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
    let metadata = serde_json::json!({ "main_module": "worker.js", "vars": vars }).to_string();
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

/// An enrolled edge's config file and HTTP address.
#[derive(Clone, Debug)]
pub struct EdgeSetup {
  pub config: PathBuf,
  pub http: SocketAddr,
}

impl EdgeSetup {
  pub fn start(&self) -> Proc {
    let mut proc = Proc::start(
      &bin("isola-edge"),
      &[
        "serve".as_ref(),
        "--config".as_ref(),
        self.config.as_os_str(),
      ],
    );
    proc.expect_line("isola-edge serve:");
    proc
  }

  /// GET `path` on `host`, as a client of this edge would.
  pub fn get(&self, host: &str, path: &str) -> Option<Response> {
    http(self.http, "GET", host, path, &[], b"")
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
