//! The `isola-control` binary end to end: init, enroll-edge, serve, SIGTERM.

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

fn control(args: &[&str]) -> Output {
  Command::new(env!("CARGO_BIN_EXE_isola-control"))
    .args(args)
    .env("RUST_LOG", "warn")
    .output()
    .unwrap()
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
  assert!(!out.status.success());
  assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
  assert!(
    stderr(&out).contains("isola-control init"),
    "{}",
    stderr(&out)
  );

  let out = control(&["init", "--data-dir", path(&data)]);
  assert!(out.status.success(), "{}", stderr(&out));
  let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
  assert!(token.starts_with("isola_") && token.len() == 70, "{token}");
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
  assert!(!out.status.success());
  assert!(
    stderr(&out).contains("already initialised"),
    "{}",
    stderr(&out)
  );
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
  assert!(!out.status.success());
  assert!(
    stderr(&out).contains("invalid edge name"),
    "{}",
    stderr(&out)
  );

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
  let stdout = String::from_utf8(out.stdout).unwrap();
  assert!(
    stdout.starts_with("isola-control enroll-edge: enrolled edge edge-1"),
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
  assert!(String::from_utf8(out.stdout).unwrap().contains("re-issued"));
  assert_ne!(fs::read(edge.join("edge.pem")).unwrap(), cert);

  let mut child = Command::new(env!("CARGO_BIN_EXE_isola-control"))
    .args([
      "serve",
      "--data-dir",
      path(&data),
      "--api",
      "127.0.0.1:0",
      "--quic",
      "127.0.0.1:0",
    ])
    .env("RUST_LOG", "warn")
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
  let mut line = String::new();
  BufReader::new(child.stdout.take().unwrap())
    .read_line(&mut line)
    .unwrap();
  let prefix = "isola-control serve: api http://";
  assert!(line.starts_with(prefix), "{line}");
  let addr = line[prefix.len()..].split(',').next().unwrap().to_string();

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
}
