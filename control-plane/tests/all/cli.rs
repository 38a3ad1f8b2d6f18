//! The `isola-control` binary end to end: init, enroll-edge, serve, SIGTERM.
//! Log output is read as JSON lines (`--log-format json`), never as prose.

use std::fs;
use std::io::BufRead as _;
use std::io::BufReader;
use std::io::Read as _;
use std::io::Write as _;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;

/// The binary, logging JSON at the default level whatever the caller's
/// environment says.
fn command() -> Command {
  let mut cmd = Command::new(env!("CARGO_BIN_EXE_isola-control"));
  cmd
    .arg("--log-format=json")
    .env_remove("ISOLA_LOG")
    .env_remove("RUST_LOG");
  cmd
}

fn control(args: &[&str]) -> Output {
  command().args(args).output().unwrap()
}

/// One log line: every line on stderr must be a JSON event.
fn event(line: &str) -> Value {
  serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
}

fn events(out: &Output) -> Vec<Value> {
  stderr(out)
    .lines()
    .filter(|l| !l.is_empty())
    .map(event)
    .collect()
}

/// The first event with message `message`.
fn find<'a>(events: &'a [Value], message: &str) -> &'a Value {
  events
    .iter()
    .find(|e| e["fields"]["message"] == message)
    .unwrap_or_else(|| panic!("no {message:?} event in {events:#?}"))
}

/// The `error` field of the failed command's last event, which must be an
/// ERROR.
fn failure(out: &Output) -> String {
  assert!(!out.status.success());
  let events = events(out);
  let last = events.last().expect("an error event");
  assert_eq!(last["level"], "ERROR", "{last}");
  assert_eq!(last["fields"]["message"], "failed", "{last}");
  last["fields"]["error"].as_str().unwrap().to_string()
}

fn path(p: &Path) -> &str {
  p.to_str().unwrap()
}

fn mode(p: &Path) -> u32 {
  fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn stderr(out: &Output) -> String {
  String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One HTTP/1.1 request; the status code and body.
fn http(addr: &str, method: &str, target: &str, token: &str) -> (u16, String) {
  let mut stream = TcpStream::connect(addr).unwrap();
  write!(
    stream,
    "{method} {target} HTTP/1.1\r\nHost: control.test\r\nAuthorization: Bearer {token}\r\n\
     Connection: close\r\nContent-Length: 0\r\n\r\n"
  )
  .unwrap();
  let mut response = String::new();
  stream.read_to_string(&mut response).unwrap();
  let status = response[9..12].parse().unwrap();
  let body = response
    .split_once("\r\n\r\n")
    .map(|(_, b)| b.to_string())
    .unwrap_or_default();
  (status, body)
}

#[test]
fn init_enroll_serve_and_stop() {
  let tmp = tempfile::tempdir().unwrap();
  let data = tmp.path().join("data");
  let edge = tmp.path().join("edge");

  let out = control(&[
    "enroll-edge",
    "--data-dir",
    path(&data),
    "--name",
    "e1",
    "--out",
    path(&edge),
  ]);
  let error = failure(&out);
  assert!(error.contains("isola-control init"), "{error}");

  let out = control(&["init", "--data-dir", path(&data)]);
  assert!(out.status.success(), "{}", stderr(&out));
  let token = String::from_utf8(out.stdout.clone())
    .unwrap()
    .trim()
    .to_string();
  assert!(token.starts_with("isola_") && token.len() == 70, "{token}");
  let logged = events(&out);
  let created = find(
    &logged,
    "initialised the data directory; the admin token follows on stdout",
  );
  assert_eq!(created["level"], "INFO");
  assert_eq!(created["fields"]["account"], "default");
  assert_eq!(
    created["fields"]["token_file"],
    path(&data.join("admin-token"))
  );
  assert!(
    logged.iter().all(|e| !e.to_string().contains(&token)),
    "the token is not logged: {logged:#?}"
  );
  assert_eq!(
    fs::read_to_string(data.join("admin-token")).unwrap().trim(),
    token
  );
  for (file, want) in [
    ("control.db", None),
    ("ca.pem", Some(0o644)),
    ("control.pem", Some(0o644)),
    ("ca-key.pem", Some(0o600)),
    ("control-key.pem", Some(0o600)),
    ("secrets.key", Some(0o600)),
    ("admin-token", Some(0o600)),
  ] {
    let p = data.join(file);
    assert!(p.exists(), "{file}");
    if let Some(want) = want {
      assert_eq!(mode(&p), want, "{file}");
    }
  }
  assert_eq!(fs::read(data.join("secrets.key")).unwrap().len(), 32);

  // A second init refuses and changes nothing.
  let ca = fs::read(data.join("ca.pem")).unwrap();
  let out = control(&["init", "--data-dir", path(&data)]);
  let error = failure(&out);
  assert!(error.contains("already initialised"), "{error}");
  assert_eq!(fs::read(data.join("ca.pem")).unwrap(), ca);
  assert_eq!(
    fs::read_to_string(data.join("admin-token")).unwrap().trim(),
    token
  );

  let out = control(&[
    "enroll-edge",
    "--data-dir",
    path(&data),
    "--name",
    "Edge_1",
    "--out",
    path(&edge),
  ]);
  let error = failure(&out);
  assert!(error.contains("invalid edge name"), "{error}");

  let out = control(&[
    "enroll-edge",
    "--data-dir",
    path(&data),
    "--name",
    "edge-1",
    "--out",
    path(&edge),
    "--control-address",
    "10.0.0.1:8701",
  ]);
  assert!(out.status.success(), "{}", stderr(&out));
  let logged = events(&out);
  let enrolled = find(&logged, "enrolled edge");
  assert_eq!(enrolled["fields"]["edge"], "edge-1", "{enrolled}");
  assert_eq!(enrolled["fields"]["new"], true, "{enrolled}");
  assert_eq!(enrolled["fields"]["config_kept"], false, "{enrolled}");
  assert_eq!(enrolled["fields"]["out"], path(&edge), "{enrolled}");
  // stdout tells the user which file to use next.
  let stdout = String::from_utf8(out.stdout).unwrap();
  assert!(
    stdout.contains(&format!("--config {}", path(&edge.join("edge.toml")))),
    "{stdout}"
  );
  let config = fs::read_to_string(edge.join("edge.toml")).unwrap();
  assert!(
    config.contains("[server]"),
    "a hint about [server]: {config}"
  );
  let control_section = &config[config.find("\n[control]").unwrap() + 1..];
  assert_eq!(
    control_section,
    "[control]\naddress = \"10.0.0.1:8701\"\nname = \"edge-1\"\nca = \"ca.pem\"\n\
     cert = \"edge.pem\"\nkey = \"edge-key.pem\"\n"
  );
  assert_eq!(fs::read(edge.join("ca.pem")).unwrap(), ca);
  assert_eq!(mode(&edge.join("edge-key.pem")), 0o600);
  let cert = fs::read(edge.join("edge.pem")).unwrap();
  // Enrolling again re-issues the certificate.
  let out = control(&[
    "enroll-edge",
    "--data-dir",
    path(&data),
    "--name",
    "edge-1",
    "--out",
    path(&edge),
  ]);
  assert!(out.status.success(), "{}", stderr(&out));
  let enrolled = find(&events(&out), "enrolled edge").clone();
  assert_eq!(enrolled["fields"]["new"], false, "re-issued: {enrolled}");
  assert_eq!(enrolled["fields"]["config_kept"], true, "{enrolled}");
  assert!(String::from_utf8(out.stdout).unwrap().contains("re-issued"));
  assert_ne!(fs::read(edge.join("edge.pem")).unwrap(), cert);

  let mut child = command()
    .args([
      "serve",
      "--data-dir",
      path(&data),
      "--api",
      "127.0.0.1:0",
      "--quic",
      "127.0.0.1:0",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
  // Drained on a thread for the whole run, so logging never blocks serve.
  let (lines_tx, lines) = std::sync::mpsc::channel();
  let stderr_pipe = child.stderr.take().unwrap();
  std::thread::spawn(move || {
    for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
      let _ = lines_tx.send(line);
    }
  });
  let serving = loop {
    let line = lines
      .recv_timeout(Duration::from_secs(30))
      .expect("serve logs \"serving\"");
    let event = event(&line);
    if event["fields"]["message"] == "serving" {
      break event;
    }
  };
  assert_eq!(serving["level"], "INFO", "{serving}");
  assert_eq!(serving["fields"]["revision"], 0, "{serving}");
  let addr = serving["fields"]["api"].as_str().unwrap().to_string();
  let (status, _) = http(&addr, "GET", "/healthz", "");
  assert_eq!(status, 200);
  let (status, body) = http(&addr, "GET", "/v1/edges", &token);
  assert_eq!(status, 200, "{body}");
  assert!(body.contains("\"edge-1\""), "{body}");
  let (status, body) = http(&addr, "GET", "/v1/edges", "isola_wrong");
  assert_eq!(status, 401, "{body}");

  let kill = Command::new("kill")
    .args(["-TERM", &child.id().to_string()])
    .status()
    .unwrap();
  assert!(kill.success());
  let deadline = Instant::now() + Duration::from_secs(15);
  loop {
    if let Some(status) = child.try_wait().unwrap() {
      assert!(status.success(), "{status}");
      break;
    }
    assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
    std::thread::sleep(Duration::from_millis(50));
  }
  let rest: Vec<Value> = lines.iter().map(|l| event(&l)).collect();
  assert_eq!(
    rest.last().map(|e| e["fields"]["message"].clone()),
    Some("stopped".into()),
    "{rest:#?}"
  );
}

#[test]
fn help_documents_logging() {
  let out = Command::new(env!("CARGO_BIN_EXE_isola-control"))
    .arg("--help")
    .output()
    .unwrap();
  assert!(out.status.success());
  let help = String::from_utf8(out.stdout).unwrap();
  for needle in ["ISOLA_LOG", "--log-format", "json"] {
    assert!(help.contains(needle), "{needle} in {help}");
  }
}

#[test]
fn a_bad_blob_store_is_refused_at_start_saying_how_to_fix_it() {
  let tmp = tempfile::tempdir().unwrap();
  let data = tmp.path().join("cp");
  assert!(control(&["init", "--data-dir", path(&data)])
    .status
    .success());

  let out = control(&["serve", "--data-dir", path(&data), "--blobs", "s4://x"]);
  assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
  let err = stderr(&out);
  assert!(
    err.contains("--blobs")
      && err.contains("unknown scheme \"s4\"; use a path, file:///PATH or s3://BUCKET/PREFIX"),
    "{err}"
  );

  let config = tmp.path().join("control.toml");
  fs::write(&config, "[storage]\nblobs = \"s3://Not_A_Bucket\"\n").unwrap();
  let out = control(&[
    "serve",
    "--data-dir",
    path(&data),
    "--config",
    path(&config),
  ]);
  let err = failure(&out);
  assert!(
    err.contains("line 2") && err.contains("\"Not_A_Bucket\" is not a bucket name"),
    "{err}"
  );

  // Nothing answers at the endpoint: the start fails naming the store and
  // the settings to check.
  let closed = std::net::TcpListener::bind("127.0.0.1:0")
    .unwrap()
    .local_addr()
    .unwrap();
  let out = command()
    .args([
      "serve",
      "--data-dir",
      path(&data),
      "--blobs",
      "s3://isola-test/x",
    ])
    .env("AWS_ENDPOINT_URL", format!("http://{closed}"))
    .env("AWS_ALLOW_HTTP", "true")
    .env("AWS_ACCESS_KEY_ID", "test")
    .env("AWS_SECRET_ACCESS_KEY", "test")
    .env("AWS_REGION", "us-east-1")
    .output()
    .unwrap();
  let err = failure(&out);
  assert!(
    err.contains("cannot use the blob store s3://isola-test/x") && err.contains("AWS_ENDPOINT_URL"),
    "{err}"
  );
  assert!(!data.join("blobs").exists());
}
