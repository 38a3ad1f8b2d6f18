//! `isola-edge healthcheck`: polls the edge's `/readyz` and, when its
//! health changes, announces or withdraws the anycast route (through
//! `birdc`) and runs the operator's hooks.
//!
//! The rules are the sans-IO [`Checker`] (fed probe results and the time,
//! it says what to run); [`run`] is its one IO driver. A change of health
//! needs `rise` consecutive good probes or `fall` consecutive bad ones, so a
//! single lost probe never moves traffic.

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;

#[derive(clap::Args)]
pub struct HealthcheckArgs {
  /// The readiness URL to poll: the edge's admin listener (`[server]
  /// admin`), which answers 200 once the node serves and 503 while it
  /// drains.
  #[arg(long, default_value = "http://127.0.0.1:9090/readyz")]
  url: http::Uri,
  /// Time between probes, in milliseconds.
  #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
  interval_ms: u64,
  /// A probe not answered within this (connect and response head) fails.
  #[arg(long, default_value_t = 800, value_parser = clap::value_parser!(u64).range(1..))]
  timeout_ms: u64,
  /// Consecutive good probes before an unhealthy edge counts as healthy.
  #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
  rise: u32,
  /// Consecutive bad probes before a healthy edge counts as unhealthy.
  #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
  fall: u32,
  /// Control BIRD: `birdc enable <protocol>` when healthy, `birdc disable
  /// <protocol>` when not and on exit (see deploy/anycast/bird.conf).
  #[arg(long)]
  announce: bool,
  /// The BIRD protocol holding the service route (a `static` protocol
  /// that the config starts `disabled`).
  #[arg(long, default_value = "isola_anycast")]
  bird_protocol: String,
  /// BIRD's control socket.
  #[arg(long, default_value = "/run/bird/bird.ctl")]
  bird_socket: PathBuf,
  /// The birdc program.
  #[arg(long, default_value = "birdc")]
  birdc: PathBuf,
  /// A shell command run when the edge becomes healthy (`sh -c`; the
  /// variable ISOLA_HEALTH is `up`). Like `birdc enable`, it must be safe
  /// to run again: it is re-run with every re-assertion.
  #[arg(long, value_name = "CMD")]
  on_up: Option<String>,
  /// A shell command run when the edge becomes unhealthy and on exit
  /// (`sh -c`; ISOLA_HEALTH is `down`). Re-run as `--on-up` is.
  #[arg(long, value_name = "CMD")]
  on_down: Option<String>,
  /// How often the current decision is applied again, in milliseconds (so
  /// a restarted BIRD, which starts with the route withdrawn, gets it
  /// back); 0: never.
  #[arg(long, default_value_t = 30_000)]
  reassert_ms: u64,
}

/// The edge's health as the checker has judged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
  /// Not yet `rise` good or `fall` bad probes in a row since the start:
  /// the route is left as it is.
  Unknown,
  Up,
  Down,
}

/// What the checker asks the driver to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
  Announce,
  Withdraw,
}

/// The checker's rules.
#[derive(Clone, Debug)]
pub struct Config {
  /// Consecutive good probes that make the edge healthy. Default: 2.
  pub rise: u32,
  /// Consecutive bad probes that make the edge unhealthy. Default: 3.
  pub fall: u32,
  /// A failed action is run again after this. Default: 1 s.
  pub retry: Duration,
  /// A successful action is run again after this; `None`: never.
  /// Default: 30 s.
  pub reassert: Option<Duration>,
}

impl Default for Config {
  fn default() -> Self {
    Self {
      rise: 2,
      fall: 3,
      retry: Duration::from_secs(1),
      reassert: Some(Duration::from_secs(30)),
    }
  }
}

/// The last action run, when, and whether it worked.
#[derive(Clone, Copy, Debug)]
struct Ran {
  action: Action,
  at: Instant,
  ok: bool,
}

/// Rise/fall hysteresis over probe results, and which action is due: sans
/// IO, fed probe results and the time.
#[derive(Debug)]
pub struct Checker {
  config: Config,
  health: Health,
  /// Good (`true`) or bad probes in a row, and how many.
  streak: Option<(bool, u32)>,
  ran: Option<Ran>,
}

impl Checker {
  pub fn new(config: Config) -> Self {
    Self {
      config,
      health: Health::Unknown,
      streak: None,
      ran: None,
    }
  }

  pub fn health(&self) -> Health {
    self.health
  }

  /// Feeds one probe result; returns the new health if this result
  /// changes it.
  pub fn observe(&mut self, good: bool) -> Option<Health> {
    let count = match self.streak {
      Some((was, n)) if was == good => n.saturating_add(1),
      _ => 1,
    };
    self.streak = Some((good, count));
    let next = match (good, self.health) {
      (true, Health::Down | Health::Unknown) if count >= self.config.rise => Health::Up,
      (false, Health::Up | Health::Unknown) if count >= self.config.fall => Health::Down,
      _ => return None,
    };
    self.health = next;
    Some(next)
  }

  /// The action to run at `now`: the one the health calls for if it has
  /// not run yet, or again once a failure's retry or the re-assertion
  /// interval has passed. `None` while the health is unknown.
  pub fn due(&self, now: Instant) -> Option<Action> {
    let want = match self.health {
      Health::Unknown => return None,
      Health::Up => Action::Announce,
      Health::Down => Action::Withdraw,
    };
    let Some(ran) = self.ran.filter(|r| r.action == want) else {
      return Some(want);
    };
    let again = if ran.ok {
      self.config.reassert?
    } else {
      self.config.retry
    };
    (now.saturating_duration_since(ran.at) >= again).then_some(want)
  }

  /// Records that `action` ran at `now`, and whether it worked.
  pub fn ran(&mut self, action: Action, now: Instant, ok: bool) {
    self.ran = Some(Ran {
      action,
      at: now,
      ok,
    });
  }
}

/// Where to probe: `host:port` and the request target.
struct Target {
  host: String,
  port: u16,
  authority: String,
  path: String,
}

impl Target {
  fn parse(url: &http::Uri) -> anyhow::Result<Target> {
    if url.scheme_str() != Some("http") {
      anyhow::bail!(
        "--url {url}: only http:// URLs are polled (the admin listener is plain HTTP); \
         e.g. --url http://127.0.0.1:9090/readyz"
      );
    }
    let authority = url
      .authority()
      .with_context(|| format!("--url {url}: no host; e.g. http://127.0.0.1:9090/readyz"))?;
    Ok(Target {
      host: authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string(),
      port: authority.port_u16().unwrap_or(80),
      authority: authority.to_string(),
      path: url.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    })
  }

  /// One GET; good if it answers 2xx.
  async fn probe(&self) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
      .await
      .with_context(|| format!("cannot connect to {}", self.authority))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
      .await
      .context("HTTP handshake")?;
    let request = http::Request::get(self.path.as_str())
      .header(http::header::HOST, self.authority.as_str())
      .body(String::new())
      .context("the probe request")?;
    // The connection is driven here, not spawned: a probe that times out
    // drops it with the socket. Once it ends, the answer (if any) is
    // already with the sender.
    let response = sender.send_request(request);
    tokio::pin!(conn, response);
    let response = tokio::select! {
      response = &mut response => response,
      end = &mut conn => match end {
        Ok(()) => response.await,
        Err(e) => Err(e),
      },
    }
    .context("no HTTP answer")?;
    let status = response.status();
    if !status.is_success() {
      anyhow::bail!("answered {status}");
    }
    Ok(())
  }
}

/// How long birdc or a hook may take before it counts as failed.
const ACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What an action runs.
struct Actions {
  bird: Option<Bird>,
  on_up: Option<String>,
  on_down: Option<String>,
}

struct Bird {
  birdc: PathBuf,
  socket: PathBuf,
  protocol: String,
}

impl Bird {
  /// `birdc enable|disable <protocol>`; it says `<protocol>: enabled` (or
  /// `already enabled`), anything else is a failure.
  async fn set(&self, action: Action) -> anyhow::Result<()> {
    let verb = match action {
      Action::Announce => "enable",
      Action::Withdraw => "disable",
    };
    let mut command = tokio::process::Command::new(&self.birdc);
    command
      .arg("-s")
      .arg(&self.socket)
      .args([verb, self.protocol.as_str()])
      .kill_on_drop(true);
    let output = tokio::time::timeout(ACTION_TIMEOUT, command.output())
      .await
      .with_context(|| format!("birdc {verb} took over {ACTION_TIMEOUT:?}"))?
      .with_context(|| format!("cannot run {}", self.birdc.display()))?;
    let said = String::from_utf8_lossy(&output.stdout);
    let said = said
      .lines()
      .filter(|l| !l.starts_with("BIRD ") || !l.ends_with("ready."))
      .collect::<Vec<_>>()
      .join("; ");
    let done = format!("{verb}d");
    if !output.status.success()
      || !said.contains(&format!("{}: ", self.protocol))
      || !said.contains(&done)
    {
      anyhow::bail!(
        "birdc {verb} {} failed ({}): {said} {}",
        self.protocol,
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
      );
    }
    Ok(())
  }
}

impl Actions {
  /// Runs `action` (birdc, then the hook); every part runs, the first
  /// failure is returned.
  async fn run(&self, action: Action) -> anyhow::Result<()> {
    let bird = match &self.bird {
      Some(bird) => bird.set(action).await,
      None => Ok(()),
    };
    let (hook, health) = match action {
      Action::Announce => (&self.on_up, "up"),
      Action::Withdraw => (&self.on_down, "down"),
    };
    let hook = match hook {
      Some(cmd) => run_hook(cmd, health).await,
      None => Ok(()),
    };
    bird.and(hook)
  }
}

async fn run_hook(cmd: &str, health: &str) -> anyhow::Result<()> {
  let mut command = tokio::process::Command::new("sh");
  command
    .args(["-c", cmd])
    .env("ISOLA_HEALTH", health)
    .kill_on_drop(true);
  let status = tokio::time::timeout(ACTION_TIMEOUT, command.status())
    .await
    .with_context(|| format!("the {health} hook took over {ACTION_TIMEOUT:?}"))?
    .context("cannot run sh")?;
  if !status.success() {
    anyhow::bail!("the {health} hook {cmd:?} failed ({status})");
  }
  Ok(())
}

fn label(health: Health) -> &'static str {
  match health {
    Health::Unknown => "unknown",
    Health::Up => "up",
    Health::Down => "down",
  }
}

pub fn run(args: HealthcheckArgs) -> anyhow::Result<()> {
  let target = Target::parse(&args.url)?;
  let interval = Duration::from_millis(args.interval_ms);
  let timeout = Duration::from_millis(args.timeout_ms);
  let mut checker = Checker::new(Config {
    rise: args.rise,
    fall: args.fall,
    retry: interval,
    reassert: (args.reassert_ms > 0).then(|| Duration::from_millis(args.reassert_ms)),
  });
  let actions = Actions {
    bird: args.announce.then(|| Bird {
      birdc: args.birdc.clone(),
      socket: args.bird_socket.clone(),
      protocol: args.bird_protocol.clone(),
    }),
    on_up: args.on_up.clone(),
    on_down: args.on_down.clone(),
  };
  if actions.bird.is_none() && actions.on_up.is_none() && actions.on_down.is_none() {
    tracing::warn!("no --announce, --on-up or --on-down: health changes are only logged");
  }
  let rt = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .context("cannot start the async runtime")?;
  rt.block_on(async {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
      url = %args.url,
      interval_ms = args.interval_ms,
      rise = args.rise,
      fall = args.fall,
      announce = args.announce,
      "health checking"
    );
    let mut failing = false;
    loop {
      tokio::select! {
        _ = term.recv() => break,
        _ = int.recv() => break,
        _ = ticks.tick() => {}
      }
      let result = match tokio::time::timeout(timeout, target.probe()).await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("no answer within {timeout:?}")),
      };
      if let Err(e) = &result {
        tracing::debug!(error = format!("{e:#}"), "probe failed");
      }
      match checker.observe(result.is_ok()) {
        Some(Health::Up) => {
          tracing::info!(health = "up", rise = args.rise, "edge healthy: announcing")
        }
        Some(health) => tracing::warn!(
          health = label(health),
          fall = args.fall,
          error = result.err().map(|e| format!("{e:#}")),
          "edge unhealthy: withdrawing"
        ),
        None => {}
      }
      if let Some(action) = checker.due(Instant::now()) {
        let outcome = actions.run(action).await;
        // A failing action is retried after every probe; it is reported
        // when it starts and stops failing, not each time.
        match (&outcome, failing) {
          (Err(e), false) => tracing::warn!(
            health = label(checker.health()),
            error = format!("{e:#}"),
            "action failed, retrying after each probe"
          ),
          (Err(e), true) => tracing::debug!(error = format!("{e:#}"), "action failed again"),
          (Ok(()), true) => tracing::info!(health = label(checker.health()), "action succeeded"),
          (Ok(()), false) => {}
        }
        failing = outcome.is_err();
        checker.ran(action, Instant::now(), outcome.is_ok());
      }
    }
    // A planned stop withdraws first, so traffic drains to other edges
    // before this one goes.
    tracing::info!("stopping: withdrawing");
    if let Err(e) = actions.run(Action::Withdraw).await {
      tracing::warn!(error = format!("{e:#}"), "withdrawing on exit failed");
    }
    anyhow::Ok(())
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  fn checker() -> Checker {
    Checker::new(Config::default())
  }

  #[test]
  fn unknown_until_rise_good_or_fall_bad_in_a_row() {
    let mut c = checker();
    let now = Instant::now();
    assert_eq!(c.observe(true), None);
    assert_eq!(c.due(now), None, "nothing runs while the health is unknown");
    assert_eq!(c.observe(true), Some(Health::Up));
    assert_eq!(c.due(now), Some(Action::Announce));

    let mut c = checker();
    assert_eq!(c.observe(false), None);
    assert_eq!(c.observe(false), None);
    assert_eq!(c.observe(false), Some(Health::Down));
    assert_eq!(c.due(now), Some(Action::Withdraw));
  }

  #[test]
  fn alternating_results_never_change_the_health() {
    let mut c = checker();
    c.observe(true);
    c.observe(true);
    assert_eq!(c.health(), Health::Up);
    for i in 0..100 {
      assert_eq!(c.observe(i % 3 == 2), None, "probe {i}");
    }
    // Two bad, one good, two bad: never three in a row.
    assert_eq!(c.health(), Health::Up);
    let mut c = checker();
    for _ in 0..3 {
      c.observe(false);
    }
    for i in 0..100 {
      assert_eq!(c.observe(i % 2 == 0), None, "probe {i}");
    }
    assert_eq!(c.health(), Health::Down);
  }

  #[test]
  fn fall_then_rise() {
    let mut c = checker();
    let now = Instant::now();
    c.observe(true);
    c.observe(true);
    c.ran(Action::Announce, now, true);
    assert_eq!(c.due(now), None, "already announced");
    assert_eq!(c.observe(false), None);
    assert_eq!(c.observe(false), None);
    assert_eq!(c.observe(false), Some(Health::Down));
    assert_eq!(c.observe(false), None, "a change is reported once");
    assert_eq!(c.due(now), Some(Action::Withdraw));
    c.ran(Action::Withdraw, now, true);
    assert_eq!(c.observe(true), None);
    assert_eq!(c.observe(true), Some(Health::Up));
    assert_eq!(c.due(now), Some(Action::Announce));
  }

  #[test]
  fn a_failed_action_is_retried_and_a_done_one_reasserted() {
    let mut c = checker();
    let t0 = Instant::now();
    c.observe(true);
    c.observe(true);
    c.ran(Action::Announce, t0, false);
    assert_eq!(c.due(t0 + Duration::from_millis(999)), None);
    assert_eq!(c.due(t0 + Duration::from_secs(1)), Some(Action::Announce));
    let t1 = t0 + Duration::from_secs(1);
    c.ran(Action::Announce, t1, true);
    assert_eq!(c.due(t1 + Duration::from_secs(29)), None);
    assert_eq!(c.due(t1 + Duration::from_secs(30)), Some(Action::Announce));

    let mut c = Checker::new(Config {
      reassert: None,
      ..Config::default()
    });
    c.observe(true);
    c.observe(true);
    c.ran(Action::Announce, t0, true);
    assert_eq!(c.due(t0 + Duration::from_secs(3600)), None);
  }

  #[test]
  fn rise_and_fall_of_one_follow_every_probe() {
    let mut c = Checker::new(Config {
      rise: 1,
      fall: 1,
      ..Config::default()
    });
    assert_eq!(c.observe(false), Some(Health::Down));
    assert_eq!(c.observe(true), Some(Health::Up));
    assert_eq!(c.observe(true), None);
    assert_eq!(c.observe(false), Some(Health::Down));
  }

  /// A server that answers every request with `head` (or never, if
  /// empty); the URL of its /readyz.
  async fn answering(head: &'static str) -> Target {
    use tokio::io::AsyncReadExt as _;
    use tokio::io::AsyncWriteExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
      loop {
        let (mut socket, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
          let mut buf = [0u8; 1024];
          let _ = socket.read(&mut buf).await;
          if head.is_empty() {
            std::future::pending::<()>().await;
          }
          let _ = socket.write_all(head.as_bytes()).await;
        });
      }
    });
    Target::parse(&format!("http://{addr}/readyz").parse().unwrap()).unwrap()
  }

  #[tokio::test]
  async fn a_probe_is_good_only_for_a_2xx_answer() {
    let ok = answering("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n").await;
    ok.probe().await.unwrap();
    let draining = answering("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
    let e = draining.probe().await.unwrap_err();
    assert!(format!("{e:#}").contains("503"), "{e:#}");
    let closed = answering("garbage\r\n\r\n").await;
    assert!(closed.probe().await.is_err());
    let silent = answering("").await;
    let waited = tokio::time::timeout(Duration::from_millis(200), silent.probe()).await;
    assert!(
      waited.is_err(),
      "a silent server is left to the probe timeout"
    );
  }

  #[test]
  fn urls() {
    let t = Target::parse(&"http://127.0.0.1:9090/readyz".parse().unwrap()).unwrap();
    assert_eq!(
      (t.host.as_str(), t.port, t.path.as_str()),
      ("127.0.0.1", 9090, "/readyz")
    );
    let t = Target::parse(&"http://[::1]/readyz?x=1".parse().unwrap()).unwrap();
    assert_eq!(
      (t.host.as_str(), t.port, t.path.as_str()),
      ("::1", 80, "/readyz?x=1")
    );
    let e = Target::parse(&"https://edge/readyz".parse().unwrap())
      .err()
      .unwrap();
    assert!(e.to_string().contains("only http://"), "{e}");
    let e = Target::parse(&"/readyz".parse().unwrap()).err().unwrap();
    assert!(e.to_string().contains("http://"), "{e}");
  }
}
