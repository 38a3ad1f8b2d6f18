//! What the process-level tests share: a running `isola-edge` whose output
//! lines are collected, killed when dropped.

use std::io::BufRead as _;
use std::io::BufReader;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

pub struct Proc {
  pub child: Child,
  lines: mpsc::Receiver<String>,
}

impl Drop for Proc {
  fn drop(&mut self) {
    let _ = self.child.kill();
    let _ = self.child.wait();
  }
}

impl Proc {
  /// Starts `isola-edge` with `args`, collecting stdout and stderr lines.
  pub fn start(args: &[&std::ffi::OsStr]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_isola-edge"))
      .args(args)
      .stdout(Stdio::piped())
      .stderr(Stdio::piped())
      .spawn()
      .expect("isola-edge starts");
    let (tx, lines) = mpsc::channel();
    for stream in [
      Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
      Box::new(child.stderr.take().unwrap()),
    ] {
      let tx = tx.clone();
      std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
          let _ = tx.send(line);
        }
      });
    }
    Proc { child, lines }
  }

  /// Waits (up to 20 s) for an output line containing `needle`.
  pub fn expect_line(&self, needle: &str) -> String {
    let mut seen = Vec::new();
    loop {
      match self.lines.recv_timeout(Duration::from_secs(20)) {
        Ok(line) if line.contains(needle) => return line,
        Ok(line) => seen.push(line),
        Err(_) => panic!("no output line containing {needle:?}; saw {seen:#?}"),
      }
    }
  }
}

/// Writes `text` to `dir/name`, creating folders.
pub fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
  let path = dir.join(name);
  std::fs::create_dir_all(path.parent().unwrap()).unwrap();
  std::fs::write(&path, text).unwrap();
  path
}
