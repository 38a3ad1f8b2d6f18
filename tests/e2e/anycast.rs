//! Anycast: two edges announce one service address over BGP (BIRD, with
//! deploy/anycast/bird.conf), each through `isola-edge healthcheck
//! --announce`; a router picks the shorter AS path and a client follows
//! it. Killing the preferred edge moves traffic to the other one once its
//! checker withdraws the route; the time that takes is printed.
//!
//! Network namespaces need root (CI runs as root): where `ip netns add` is
//! not permitted the failover test says so and passes. Without BIRD
//! (`apt-get install bird2`) it does the same, unless ISOLA_ANYCAST_REQUIRED
//! is set (`.ci/run` installs bird2 and sets it when root).

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use isola_integration::bin;
use isola_integration::poll;
use isola_integration::write;
use isola_integration::Proc;

/// The service address every edge has on `lo` and announces.
const SERVICE: &str = "10.99.99.1";
/// Generous bound for anything the test waits for (BGP sessions take a
/// few seconds to come up).
const LIMIT: Duration = Duration::from_secs(60);
/// The checkers' probe interval (and timeout), in ms; the default is 1000.
const PROBE_MS: &str = "200";

const WORKER: &str =
  "export default {\n  fetch(request, env) {\n    return new Response(`edge ${env.EDGE}\\n`);\n  },\n};\n";

/// Runs `program args`; its stderr (or stdout) on failure.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
  let output = Command::new(program)
    .args(args)
    .output()
    .map_err(|e| format!("cannot run {program}: {e}"))?;
  if output.status.success() {
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
  } else {
    Err(format!(
      "{program} {args:?}: {} {}{}",
      output.status,
      String::from_utf8_lossy(&output.stderr),
      String::from_utf8_lossy(&output.stdout)
    ))
  }
}

/// `ip <words>`, which must work (`words`: split at spaces).
fn ip(words: &str) {
  let args: Vec<&str> = words.split_whitespace().collect();
  run("ip", &args).unwrap_or_else(|e| panic!("{e}"));
}

/// What the failover test cannot run without: a clear message and a pass.
fn skip(why: &str) {
  eprintln!("anycast failover test skipped: {why}");
}

/// A program from PATH or the sbin folders (where Debian puts bird).
fn find(program: &str) -> Option<PathBuf> {
  let path = std::env::var_os("PATH").unwrap_or_default();
  std::env::split_paths(&path)
    .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
    .map(|dir| dir.join(program))
    .find(|p| p.is_file())
}

/// Network namespaces, deleted when dropped (after the processes in them,
/// which are declared later and so dropped first).
struct Namespaces(Vec<String>);

impl Namespaces {
  /// Adds the namespace `name`; `Err` with `ip`'s words if it cannot.
  fn add(&mut self, name: &str) -> Result<(), String> {
    run("ip", &["netns", "add", name])?;
    self.0.push(name.to_string());
    ip(&format!("-n {name} link set lo up"));
    Ok(())
  }
}

impl Drop for Namespaces {
  fn drop(&mut self) {
    for name in &self.0 {
      let _ = run("ip", &["netns", "del", name]);
    }
  }
}

/// `program args` inside `ns`, its output collected; killed when dropped.
/// `ip netns exec` execs the program, so the process is the program itself.
fn start_in(ns: &str, program: &Path, args: &[&str]) -> Proc {
  let mut all: Vec<&std::ffi::OsStr> = vec![
    "netns".as_ref(),
    "exec".as_ref(),
    ns.as_ref(),
    program.as_os_str(),
  ];
  all.extend(args.iter().map(std::ffi::OsStr::new));
  Proc::start(Path::new("ip"), &all)
}

/// deploy/anycast/bird.conf with its `define` lines set to `values`.
fn edge_bird_conf(values: &[(&str, String)]) -> String {
  let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
  let template = std::fs::read_to_string(root.join("deploy/anycast/bird.conf"))
    .expect("deploy/anycast/bird.conf");
  let mut out = String::from("log stderr all;\n");
  for line in template.lines() {
    let name = line
      .strip_prefix("define ")
      .and_then(|rest| rest.split_whitespace().next());
    match name.and_then(|n| values.iter().find(|(k, _)| *k == n)) {
      Some((name, value)) => out.push_str(&format!("define {name} = {value};\n")),
      None => {
        assert!(name.is_none(), "the test sets no value for {line:?}");
        out.push_str(line);
        out.push('\n');
      }
    }
  }
  out
}

/// One GET of the service address from namespace `ns`; which edge answered
/// (`e1`, `e2`), if one did. Bash's /dev/tcp: nothing to install.
fn ask(ns: &str) -> Option<String> {
  let script = format!(
    "exec 3<>/dev/tcp/{SERVICE}/8080 && printf 'GET / HTTP/1.0\\r\\nHost: anycast.test\\r\\n\\r\\n' >&3 && cat <&3"
  );
  let out = run(
    "ip",
    &["netns", "exec", ns, "timeout", "2", "bash", "-c", &script],
  )
  .ok()?;
  out
    .lines()
    .find_map(|l| l.strip_prefix("edge "))
    .map(|e| e.trim().to_string())
}

/// Polls the client until `edge` answers; the time since `since`.
fn wait_edge(
  client: &str,
  edge: &str,
  since: Instant,
  what: &str,
  dump: &mut dyn FnMut() -> String,
) -> Duration {
  let mut last = None;
  let found = poll(LIMIT, || {
    last = ask(client);
    (last.as_deref() == Some(edge)).then(|| since.elapsed())
  });
  found.unwrap_or_else(|| {
    panic!(
      "{what}: the client never reached {edge} within {LIMIT:?}; last answer {last:?}\n{}",
      dump()
    )
  })
}

/// One edge site: its namespace, node, BIRD and health checker.
struct Site {
  ns: String,
  config: PathBuf,
  sock: String,
}

impl Site {
  fn serve(&self, edge_bin: &Path) -> Proc {
    let mut proc = start_in(
      &self.ns,
      edge_bin,
      &[
        "--log-format",
        "json",
        "serve",
        "--config",
        &self.config.to_string_lossy(),
      ],
    );
    proc.listening("http");
    proc
  }

  fn checker(&self, edge_bin: &Path, birdc: &Path) -> Proc {
    start_in(
      &self.ns,
      edge_bin,
      &[
        "--log-format",
        "json",
        "healthcheck",
        "--announce",
        "--url",
        "http://127.0.0.1:9090/readyz",
        "--interval-ms",
        PROBE_MS,
        "--timeout-ms",
        PROBE_MS,
        "--rise",
        "2",
        "--fall",
        "3",
        "--birdc",
        &birdc.to_string_lossy(),
        "--bird-socket",
        &self.sock,
      ],
    )
  }
}

#[test]
fn anycast_failover_between_two_edges_in_network_namespaces() {
  let required = std::env::var_os("ISOLA_ANYCAST_REQUIRED").is_some();
  let (Some(bird), Some(birdc), Some(_)) = (find("bird"), find("birdc"), find("ip")) else {
    assert!(
      !required,
      "ISOLA_ANYCAST_REQUIRED is set, but bird, birdc or ip is missing"
    );
    return skip("BIRD 2 or iproute2 is not installed (apt-get install bird2 iproute2)");
  };
  let id = std::process::id();
  let [r, e1, e2, c] = ["r", "e1", "e2", "c"].map(|n| format!("isola-{n}-{id}"));
  let mut netns = Namespaces(Vec::new());
  match netns.add(&r) {
    Ok(()) => {}
    Err(e) if e.contains("not permitted") || e.contains("Permission denied") => {
      return skip(&format!(
        "network namespaces are not permitted here ({})",
        e.trim()
      ));
    }
    Err(e) => panic!("{e}"),
  }
  for ns in [&e1, &e2, &c] {
    netns.add(ns).unwrap_or_else(|e| panic!("{e}"));
  }
  // Router links: 10.99.N.1 on the router, 10.99.N.2 beyond it.
  for (n, (link, ns)) in [("e1", &e1), ("e2", &e2), ("c", &c)]
    .into_iter()
    .enumerate()
  {
    let n = n + 1;
    ip(&format!(
      "-n {r} link add {link} type veth peer name uplink netns {ns}"
    ));
    ip(&format!("-n {r} addr add 10.99.{n}.1/24 dev {link}"));
    ip(&format!("-n {r} link set {link} up"));
    ip(&format!("-n {ns} addr add 10.99.{n}.2/24 dev uplink"));
    ip(&format!("-n {ns} link set uplink up"));
    ip(&format!("-n {ns} route add default via 10.99.{n}.1"));
  }
  ip(&format!(
    "netns exec {r} sysctl -q -w net.ipv4.ip_forward=1"
  ));

  let dir = tempfile::tempdir().unwrap();
  let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
  let setup_lo = root.join("deploy/anycast/setup-lo.sh");
  let edge_bin = bin("isola-edge");
  let router_sock = dir.path().join("r.ctl").to_string_lossy().into_owned();
  let router_conf = write(
    dir.path(),
    "r.conf",
    "log stderr all;\nrouter id 10.99.3.1;\nprotocol device {}\n\
     protocol kernel { ipv4 { import none; export all; }; }\n\
     protocol bgp e1 { local as 65000; neighbor 10.99.1.2 as 65001; \
     ipv4 { import all; export none; }; }\n\
     protocol bgp e2 { local as 65000; neighbor 10.99.2.2 as 65002; \
     ipv4 { import all; export none; }; }\n",
  );
  let mut router = start_in(
    &r,
    &bird,
    &[
      "-f",
      "-c",
      &router_conf.to_string_lossy(),
      "-s",
      &router_sock,
      "-P",
      &dir.path().join("r.pid").to_string_lossy(),
    ],
  );

  // e2 prepends its AS twice: the router prefers e1's shorter path.
  let sites = [(e1.clone(), "e1", 1, 0), (e2.clone(), "e2", 2, 2)].map(|(ns, name, n, prepend)| {
    let site_dir = dir.path().join(name);
    write(&site_dir, "worker.js", WORKER);
    let config = write(
      &site_dir,
      "edge.toml",
      &format!(
        "[server]\nlisten = \"0.0.0.0:8080\"\nadmin = \"127.0.0.1:9090\"\nthreads = 1\n\
         data_dir = \"data\"\n\n[[worker]]\nname = \"who\"\nentry = \"worker.js\"\n\
         vars = {{ EDGE = \"{name}\" }}\nroutes = [\"anycast.test/*\"]\n"
      ),
    );
    let conf = write(
      &site_dir,
      "bird.conf",
      &edge_bird_conf(&[
        ("ROUTER_ID", format!("10.99.{n}.2")),
        ("SERVICE", format!("{SERVICE}/32")),
        ("LOCAL_AS", format!("6500{n}")),
        ("UPSTREAM_IP", format!("10.99.{n}.1")),
        ("UPSTREAM_AS", "65000".into()),
        ("PREPEND", prepend.to_string()),
      ]),
    );
    run(
      "ip",
      &[
        "netns",
        "exec",
        &ns,
        "sh",
        &setup_lo.to_string_lossy(),
        SERVICE,
      ],
    )
    .unwrap_or_else(|e| panic!("setup-lo.sh: {e}"));
    let sock = site_dir.join("bird.ctl").to_string_lossy().into_owned();
    let bird = start_in(
      &ns,
      &bird,
      &[
        "-f",
        "-c",
        &conf.to_string_lossy(),
        "-s",
        &sock,
        "-P",
        &site_dir.join("bird.pid").to_string_lossy(),
      ],
    );
    (Site { ns, config, sock }, bird)
  });
  let [(site1, mut bird1), (site2, mut bird2)] = sites;
  let mut edge1 = Some(site1.serve(&edge_bin));
  let edge2 = site2.serve(&edge_bin);
  let mut checker1 = Some(site1.checker(&edge_bin, &birdc));
  let mut checker2 = site2.checker(&edge_bin, &birdc);
  for checker in [checker1.as_mut().unwrap(), &mut checker2] {
    checker.expect_event("edge healthy: announcing");
  }

  let show = |sock: &str| {
    run(
      &birdc.to_string_lossy(),
      &["-s", sock, "show", "route", "all"],
    )
    .unwrap_or_else(|e| e)
  };
  // Both routes at the router, e1's chosen, before anything is measured.
  let both = poll(LIMIT, || {
    let routes = show(&router_sock);
    let chosen = |l: &&str| l.contains("[e1 ") && l.contains(" * ");
    (routes.matches("unicast [").count() == 2 && routes.lines().any(|l| chosen(&l)))
      .then_some(routes)
  });
  let mut dump = || {
    format!(
      "router routes:\n{}\nrouter:\n{}\ne1 bird:\n{}\ne2 bird:\n{}",
      show(&router_sock),
      router.output(),
      bird1.output(),
      bird2.output()
    )
  };
  assert!(
    both.is_some(),
    "the router never learnt both paths\n{}",
    dump()
  );
  wait_edge(&c, "e1", Instant::now(), "the shorter path", &mut dump);

  // e1's node dies: its checker sees /readyz fail 3 times and withdraws.
  let killed = Instant::now();
  edge1.take().unwrap().kill();
  let failover = wait_edge(&c, "e2", killed, "after e1's node was killed", &mut dump);
  checker1
    .as_mut()
    .unwrap()
    .expect_event_where("edge unhealthy: withdrawing", |e| {
      e.field("health").as_deref() == Some("down")
    });
  println!(
    "anycast failover: {} ms (edge killed → traffic on the other edge; probes every \
     {PROBE_MS} ms, fall 3)",
    failover.as_millis()
  );

  // e1 back: after `rise` good probes, traffic returns to the shorter path.
  edge1 = Some(site1.serve(&edge_bin));
  let back = wait_edge(
    &c,
    "e1",
    Instant::now(),
    "after e1's node restarted",
    &mut dump,
  );
  println!(
    "anycast return: {} ms (node listening → traffic back on it; probes every {PROBE_MS} \
     ms, rise 2)",
    back.as_millis()
  );

  // A planned stop: e1's checker withdraws before it exits, while e1's
  // node still serves.
  let mut checker = checker1.take().unwrap();
  let stopped = Instant::now();
  checker.signal("TERM");
  let drained = wait_edge(
    &c,
    "e2",
    stopped,
    "after e1's checker was stopped",
    &mut dump,
  );
  println!(
    "anycast planned withdraw: {} ms (checker SIGTERM → traffic on the other edge)",
    drained.as_millis()
  );
  checker.expect_event("stopping: withdrawing");
  let status = checker.child.wait().expect("the checker exits");
  assert!(
    status.success(),
    "the checker exited with {status}: {}",
    checker.output()
  );
  let e1_routes = show(&site1.sock);
  assert!(
    !e1_routes.contains(SERVICE),
    "e1's BIRD still holds the service route:\n{e1_routes}"
  );
  assert_eq!(ask(&c).as_deref(), Some("e2"));
  assert_eq!(
    ask(&site1.ns).as_deref(),
    Some("e1"),
    "e1's node serves on, only not announced"
  );
  drop((edge1, edge2, checker2));
}

/// Without BGP: the checker runs its hooks as a real node's /readyz comes
/// and goes, and withdraws on SIGTERM.
#[test]
fn healthcheck_hooks_follow_the_node_readiness() {
  let dir = tempfile::tempdir().unwrap();
  write(dir.path(), "worker.js", WORKER);
  let config = write(
    dir.path(),
    "edge.toml",
    "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nthreads = 1\n\
     data_dir = \"data\"\n\n[[worker]]\nname = \"who\"\nentry = \"worker.js\"\n\
     vars = { EDGE = \"solo\" }\nroutes = [\"anycast.test/*\"]\n",
  );
  let edge_bin = bin("isola-edge");
  let mut edge = Proc::start(
    &edge_bin,
    &[
      "--log-format".as_ref(),
      "json".as_ref(),
      "serve".as_ref(),
      "--config".as_ref(),
      config.as_os_str(),
    ],
  );
  let admin = edge.listening("admin");
  let log = dir.path().join("hooks.log");
  let hook = format!("echo $ISOLA_HEALTH >> '{}'", log.display());
  let mut checker = Proc::start(
    &edge_bin,
    &[
      "--log-format",
      "json",
      "healthcheck",
      "--url",
      &format!("http://{admin}/readyz"),
      "--interval-ms",
      "50",
      "--on-up",
      &hook,
      "--on-down",
      &hook,
    ]
    .map(std::ffi::OsStr::new),
  );
  let hooks = || std::fs::read_to_string(&log).unwrap_or_default();
  checker.expect_event("edge healthy: announcing");
  assert!(
    poll(LIMIT, || (hooks() == "up\n").then_some(())).is_some(),
    "{:?}",
    hooks()
  );

  edge.kill();
  checker.expect_event("edge unhealthy: withdrawing");
  assert!(
    poll(LIMIT, || (hooks() == "up\ndown\n").then_some(())).is_some(),
    "{:?}",
    hooks()
  );

  checker.signal("TERM");
  checker.expect_event("stopping: withdrawing");
  let status = checker.child.wait().expect("the checker exits");
  assert!(status.success(), "{status}: {}", checker.output());
  assert_eq!(hooks(), "up\ndown\ndown\n", "the exit withdraws again");
}
