use super::*;

const MIN: Millis = 60_000;
/// 2026-11-29T12:00:00Z.
const T12: Millis = 1_795_953_600_000;

fn key(worker: &str) -> CronKey {
  CronKey {
    worker: worker.into(),
    cron: "* * * * *".into(),
  }
}

fn entry(worker: &str, cron: &str, next_due: Millis) -> Entry {
  Entry {
    key: CronKey {
      worker: worker.into(),
      cron: cron.into(),
    },
    schedule: Schedule::parse(cron).unwrap(),
    next_due,
  }
}

fn scheduler(edges: &[&str], entries: Vec<Entry>) -> Scheduler {
  let mut s = Scheduler::new(Config::default(), 0);
  s.set_schedules(entries);
  for e in edges {
    s.edges.insert(e.to_string());
  }
  s
}

fn actions(s: &mut Scheduler) -> Vec<Action> {
  std::iter::from_fn(|| s.poll_action()).collect()
}

/// Dispatches among `actions`: (edge, scheduled time, attempt, id).
fn dispatches(actions: &[Action]) -> Vec<(String, Millis, u32, u64)> {
  actions
    .iter()
    .filter_map(|a| match a {
      Action::Dispatch { run, tick } => {
        assert_eq!(run.id, tick.id);
        Some((run.edge.clone(), tick.scheduled_time, run.attempt, run.id))
      }
      _ => None,
    })
    .collect()
}

fn records(actions: &[Action]) -> Vec<(Millis, RunOutcome, u32)> {
  actions
    .iter()
    .filter_map(|a| match a {
      Action::Record(r) => Some((r.scheduled_time, r.outcome, r.attempt)),
      _ => None,
    })
    .collect()
}

fn report(id: u64, outcome: RunOutcome) -> TickReport {
  TickReport {
    id,
    outcome,
    no_retry: false,
    version: Some("v1".into()),
    cpu_us: 10,
    wall_us: 20,
  }
}

/// Accepts and completes the one dispatch in `actions` with `outcome`.
fn complete(
  s: &mut Scheduler,
  actions: &[Action],
  outcome: RunOutcome,
  now: Millis,
) -> Vec<Action> {
  let d = dispatches(actions);
  assert_eq!(d.len(), 1, "{actions:?}");
  s.accepted(d[0].3);
  s.report(report(d[0].3, outcome), now);
  self::actions(s)
}

#[test]
fn each_tick_runs_once_at_its_time_and_the_next_due_is_stored_first() {
  let mut s = scheduler(&["e1", "e2", "e3"], vec![entry("w", "* * * * *", T12)]);
  s.poll(T12 - 1);
  assert!(actions(&mut s).is_empty());
  assert_eq!(s.poll_timeout(), Some(T12));
  s.poll(T12);
  let a = actions(&mut s);
  assert_eq!(
    a[0],
    Action::Advance {
      key: key("w"),
      next_due: T12 + MIN
    }
  );
  let d = dispatches(&a);
  assert_eq!(d.len(), 1);
  assert_eq!((d[0].1, d[0].2), (T12, 1));
  if let Action::Dispatch { tick, .. } = &a[1] {
    assert_eq!(tick.cron, "* * * * *");
    assert_eq!(tick.cpu_ms, 30_000);
  }
  // Polling again at the same time hands out nothing more.
  s.poll(T12 + 5);
  assert!(actions(&mut s).is_empty());
  let done = complete(&mut s, &a, RunOutcome::Ok, T12 + 100);
  assert_eq!(records(&done), vec![(T12, RunOutcome::Ok, 1)]);
  s.poll(T12 + MIN);
  assert_eq!(dispatches(&actions(&mut s))[0].1, T12 + MIN);
}

#[test]
fn a_worker_keeps_its_edge_and_moves_only_when_that_edge_goes() {
  let mut s = scheduler(
    &["e1", "e2", "e3"],
    vec![entry("w", "* * * * *", T12), entry("x", "* * * * *", T12)],
  );
  let mut first: BTreeMap<String, String> = BTreeMap::new();
  for minute in 0..5 {
    let now = T12 + minute * MIN;
    s.poll(now);
    for a in actions(&mut s) {
      if let Action::Dispatch { run, .. } = a {
        let edge = first
          .entry(run.key.worker.clone())
          .or_insert(run.edge.clone());
        assert_eq!(edge, &run.edge, "{} moved", run.key.worker);
        s.accepted(run.id);
        s.report(report(run.id, RunOutcome::Ok), now + 10);
      }
    }
  }
  let w_edge = first["w"].clone();
  let x_edge = first["x"].clone();
  s.edge_down(&w_edge, T12 + 5 * MIN - 1);
  s.poll(T12 + 5 * MIN);
  for a in actions(&mut s) {
    if let Action::Dispatch { run, .. } = a {
      if run.key.worker == "w" {
        assert_ne!(run.edge, w_edge);
      } else if w_edge != x_edge {
        assert_eq!(run.edge, x_edge, "x moved though its edge stayed");
      }
    }
  }
}

#[test]
fn a_tick_due_while_the_previous_run_goes_on_is_skipped() {
  let mut s = scheduler(&["e1"], vec![entry("w", "* * * * *", T12)]);
  s.poll(T12);
  let a = actions(&mut s);
  let id = dispatches(&a)[0].3;
  s.accepted(id);
  s.poll(T12 + MIN);
  let a2 = actions(&mut s);
  assert!(dispatches(&a2).is_empty());
  assert_eq!(records(&a2), vec![(T12 + MIN, RunOutcome::Skipped, 0)]);
  s.report(report(id, RunOutcome::Ok), T12 + MIN + 30_000);
  let a3 = actions(&mut s);
  assert_eq!(records(&a3), vec![(T12, RunOutcome::Ok, 1)]);
  // The skipped tick is not run late.
  assert!(dispatches(&a3).is_empty());
  s.poll(T12 + 2 * MIN);
  assert_eq!(dispatches(&actions(&mut s))[0].1, T12 + 2 * MIN);
}

#[test]
fn ticks_missed_while_down_run_once_in_order_within_the_catch_up_window() {
  // Down from before 12:00 to 12:08:30: 12:00..12:03 are older than the
  // 5-minute window, 12:04..12:08 run one after another.
  let mut s = scheduler(&["e1"], vec![entry("w", "* * * * *", T12)]);
  let now = T12 + 8 * MIN + 30_000;
  s.poll(now);
  let mut a = actions(&mut s);
  let missed: Vec<Millis> = records(&a)
    .into_iter()
    .map(|(t, o, _)| {
      assert_eq!(o, RunOutcome::Missed);
      t
    })
    .collect();
  assert_eq!(missed, (0..4).map(|m| T12 + m * MIN).collect::<Vec<_>>());
  let mut ran = Vec::new();
  loop {
    let d = dispatches(&a);
    if d.is_empty() {
      break;
    }
    ran.push(d[0].1);
    a = complete(&mut s, &a, RunOutcome::Ok, now + 1);
  }
  assert_eq!(ran, (4..9).map(|m| T12 + m * MIN).collect::<Vec<_>>());
  assert_eq!(s.poll_timeout(), Some(T12 + 9 * MIN));
}

#[test]
fn a_failed_run_is_retried_with_backoff_until_the_retries_are_spent() {
  let mut s = scheduler(&["e1"], vec![entry("w", "0 * * * *", T12)]);
  s.poll(T12);
  let mut a = actions(&mut s);
  let mut now = T12;
  let mut attempts = Vec::new();
  for expected_delay in [10_000, 20_000, 40_000] {
    let d = dispatches(&a);
    attempts.push(d[0].2);
    let done = complete(&mut s, &a, RunOutcome::Exception, now);
    assert!(dispatches(&done).is_empty());
    assert_eq!(s.poll_timeout(), Some(now + expected_delay));
    s.poll(now + expected_delay - 1);
    assert!(actions(&mut s).is_empty());
    now += expected_delay;
    s.poll(now);
    a = actions(&mut s);
  }
  attempts.push(dispatches(&a)[0].2);
  let done = complete(&mut s, &a, RunOutcome::ExceededCpu, now);
  assert_eq!(records(&done), vec![(T12, RunOutcome::ExceededCpu, 4)]);
  assert_eq!(attempts, vec![1, 2, 3, 4]);
  // Spent: nothing until the next hour.
  assert_eq!(s.poll_timeout(), Some(T12 + 60 * MIN));
}

#[test]
fn no_retry_is_honoured() {
  let mut s = scheduler(&["e1"], vec![entry("w", "* * * * *", T12)]);
  s.poll(T12);
  let a = actions(&mut s);
  let id = dispatches(&a)[0].3;
  s.report(
    TickReport {
      no_retry: true,
      ..report(id, RunOutcome::Exception)
    },
    T12 + 5,
  );
  let done = actions(&mut s);
  assert_eq!(records(&done), vec![(T12, RunOutcome::Exception, 1)]);
  assert_eq!(s.poll_timeout(), Some(T12 + MIN));
}

#[test]
fn an_edge_that_does_not_accept_in_time_hands_the_tick_on_and_its_late_report_is_ignored() {
  let mut s = scheduler(&["e1", "e2"], vec![entry("w", "* * * * *", T12)]);
  s.poll(T12);
  let (first, _, _, id1) = dispatches(&actions(&mut s))[0].clone();
  s.poll(T12 + 10_000);
  let a = actions(&mut s);
  let (second, tick, attempt, id2) = dispatches(&a)[0].clone();
  assert_ne!(first, second);
  assert_ne!(id1, id2);
  assert_eq!((tick, attempt), (T12, 1));
  s.report(report(id1, RunOutcome::Ok), T12 + 11_000);
  assert!(
    actions(&mut s).is_empty(),
    "a report for a replaced id counts"
  );
  s.accepted(id2);
  s.report(report(id2, RunOutcome::Ok), T12 + 12_000);
  let done = actions(&mut s);
  assert_eq!(records(&done), vec![(T12, RunOutcome::Ok, 1)]);
  if let Action::Record(r) = &done[0] {
    assert_eq!(r.edge.as_deref(), Some(second.as_str()));
  }
}

#[test]
fn an_edge_lost_mid_run_leads_to_a_retry_elsewhere() {
  let mut s = scheduler(&["e1", "e2"], vec![entry("w", "* * * * *", T12)]);
  s.poll(T12);
  let (edge, _, _, id) = dispatches(&actions(&mut s))[0].clone();
  s.accepted(id);
  s.edge_down(&edge, T12 + 2_000);
  let a = actions(&mut s);
  assert_eq!(records(&a), vec![(T12, RunOutcome::Lost, 1)]);
  s.poll(T12 + 12_000);
  let d = dispatches(&actions(&mut s));
  assert_eq!(d.len(), 1);
  assert_ne!(d[0].0, edge);
  assert_eq!((d[0].1, d[0].2), (T12, 2));
}

#[test]
fn an_edge_without_the_worker_passes_the_tick_on() {
  let mut s = scheduler(&["e1", "e2"], vec![entry("w", "* * * * *", T12)]);
  s.poll(T12);
  let (first, _, _, id) = dispatches(&actions(&mut s))[0].clone();
  s.accepted(id);
  s.report(report(id, RunOutcome::Unavailable), T12 + 5);
  let a = actions(&mut s);
  let d = dispatches(&a);
  assert_ne!(d[0].0, first);
  assert_eq!(d[0].2, 1, "not a retry");
  assert!(records(&a).is_empty());
  // The second edge lacks it too: the attempt ends `unavailable`.
  s.report(report(d[0].3, RunOutcome::Unavailable), T12 + 6);
  let a = actions(&mut s);
  assert_eq!(records(&a), vec![(T12, RunOutcome::Unavailable, 1)]);
}

#[test]
fn a_tick_waits_for_an_edge_within_the_window_then_is_recorded() {
  let mut s = scheduler(&[], vec![entry("w", "* * * * *", T12)]);
  s.poll(T12);
  let a = actions(&mut s);
  assert!(dispatches(&a).is_empty() && records(&a).is_empty());
  // An edge connects a little later: the tick runs then.
  s.edge_up("e1", T12 + 3_000);
  let d = dispatches(&actions(&mut s));
  assert_eq!(d.len(), 1);
  assert_eq!(d[0].1, T12);

  let mut s = scheduler(&[], vec![entry("w", "0 * * * *", T12)]);
  s.poll(T12);
  actions(&mut s);
  let wake = s.poll_timeout().unwrap();
  assert_eq!(wake, T12 + 5 * MIN + 1);
  s.poll(wake);
  assert_eq!(
    records(&actions(&mut s)),
    vec![(T12, RunOutcome::NoEdge, 0)]
  );
}

#[test]
fn a_restart_resumes_from_what_was_stored_and_runs_no_tick_twice() {
  let mut s = scheduler(&["e1"], vec![entry("w", "* * * * *", T12)]);
  s.poll(T12);
  let a = actions(&mut s);
  // What the driver stored: the advance, then the in-flight run.
  let mut next_due = 0;
  let mut in_flight = None;
  for action in &a {
    match action {
      Action::Advance { next_due: n, .. } => next_due = *n,
      Action::Dispatch { run, .. } => in_flight = Some(run.clone()),
      Action::Record(_) | Action::Forget { .. } => {}
    }
  }
  let run = in_flight.unwrap();
  // The control plane restarts at 12:00:40; the edge reports after it.
  let mut s = Scheduler::new(Config::default(), run.id);
  s.set_schedules(vec![entry("w", "* * * * *", next_due)]);
  s.resume(vec![run.clone()], T12 + 40_000);
  s.edge_up("e1", T12 + 40_000);
  assert!(actions(&mut s).is_empty(), "12:00 was handed out already");
  // The edge says it is still running it, and reports later.
  s.accepted(run.id);
  s.poll(T12 + 55_000);
  assert!(
    actions(&mut s).is_empty(),
    "an accepted run is not handed on"
  );
  s.report(report(run.id, RunOutcome::Ok), T12 + 56_000);
  assert_eq!(records(&actions(&mut s)), vec![(T12, RunOutcome::Ok, 1)]);
  s.poll(T12 + MIN);
  let d = dispatches(&actions(&mut s));
  assert_eq!(d[0].1, T12 + MIN);
  assert!(d[0].3 > run.id, "ids are not reused");
}

#[test]
fn rendezvous_ranking_is_stable_and_spreads_workers() {
  let edges: BTreeSet<String> = ["e1", "e2", "e3"].map(String::from).into();
  let mut firsts = BTreeSet::new();
  for w in 0..30 {
    let worker = format!("acct_w{w}");
    let ranked = rank(&edges, &worker);
    assert_eq!(ranked, rank(&edges, &worker));
    assert_eq!(ranked.len(), 3);
    // Removing an edge that is not first keeps the first.
    let mut fewer = edges.clone();
    fewer.remove(&ranked[2]);
    assert_eq!(rank(&fewer, &worker)[0], ranked[0]);
    firsts.insert(ranked[0].clone());
  }
  assert_eq!(firsts.len(), 3, "30 workers all on one edge");
}

#[test]
fn a_resumed_run_no_edge_owns_goes_to_the_next_edge_once() {
  let mut s = scheduler(&["e1", "e2"], vec![entry("w", "0 * * * *", T12)]);
  s.poll(T12);
  let a = actions(&mut s);
  let Some(Action::Dispatch { run, .. }) = a
    .iter()
    .find(|a| matches!(a, Action::Dispatch { .. }))
    .cloned()
  else {
    panic!("{a:?}");
  };
  // Restart; the edge that had it never says it is running it.
  let mut s = Scheduler::new(Config::default(), run.id);
  s.set_schedules(vec![entry("w", "0 * * * *", T12 + 60 * MIN)]);
  s.resume(vec![run.clone()], T12 + 30_000);
  s.edges.extend(["e1".to_string(), "e2".to_string()]);
  s.poll(T12 + 39_000);
  assert!(actions(&mut s).is_empty());
  s.poll(T12 + 40_000);
  let a = actions(&mut s);
  assert!(a.contains(&Action::Forget { id: run.id }), "{a:?}");
  let d = dispatches(&a);
  assert_eq!(d.len(), 1);
  assert_ne!(d[0].0, run.edge);
  assert_eq!((d[0].1, d[0].2), (T12, 1));
}

#[test]
fn an_attempt_handed_on_leaves_no_row_in_flight() {
  let mut s = scheduler(&["e1", "e2"], vec![entry("w", "* * * * *", T12)]);
  s.poll(T12);
  let id = dispatches(&actions(&mut s))[0].3;
  s.poll(T12 + 10_000);
  let a = actions(&mut s);
  assert_eq!(a[0], Action::Forget { id });
}
