use super::*;

const T0: Millis = 1_795_953_600_000;
const Q: &str = "acme/jobs";

fn consumer(size: u32, timeout_s: i64) -> Consumer {
  Consumer {
    worker: "acme_worker".into(),
    max_batch_size: size,
    max_batch_timeout: timeout_s * 1000,
  }
}

fn dispatcher(edges: &[&str], size: u32, timeout_s: i64) -> Dispatcher {
  let mut d = Dispatcher::new(Config::default(), 0);
  for e in edges {
    d.edges.insert(e.to_string());
  }
  d.load(Q, Some(consumer(size, timeout_s)), Backlog::default(), T0);
  d
}

fn actions(d: &mut Dispatcher) -> Vec<Action> {
  std::iter::from_fn(|| d.poll_action()).collect()
}

/// The one lease among `actions`: (id, max, edge).
fn lease(actions: &[Action]) -> (u64, u32, String) {
  let leases: Vec<_> = actions
    .iter()
    .filter_map(|a| match a {
      Action::Lease { id, max, edge, .. } => Some((*id, *max, edge.clone())),
      _ => None,
    })
    .collect();
  assert_eq!(leases.len(), 1, "{actions:?}");
  leases[0].clone()
}

#[test]
fn a_full_batch_goes_at_once_and_a_partial_one_after_the_timeout() {
  // 25 messages, batches of 10, 2 s: 10 and 10 at once, 5 after 2 s.
  let mut d = dispatcher(&["e1"], 10, 2);
  d.stored(Q, &[T0; 25], T0);
  let (id, max, _) = lease(&actions(&mut d));
  assert_eq!(max, 10);
  d.leased(Q, id, 10, 10, T0);
  assert!(actions(&mut d).is_empty(), "one batch in flight at a time");
  d.accepted(id);
  d.settled(Q, id, &[], T0 + 50);
  let (id, _, _) = lease(&actions(&mut d));
  d.leased(Q, id, 10, 10, T0 + 50);
  d.settled(Q, id, &[], T0 + 100);
  // Five left: not yet.
  assert!(actions(&mut d).is_empty());
  assert_eq!(d.poll_timeout(), Some(T0 + 2000));
  d.poll(T0 + 1999);
  assert!(actions(&mut d).is_empty());
  d.poll(T0 + 2000);
  let (id, _, _) = lease(&actions(&mut d));
  d.leased(Q, id, 5, 10, T0 + 2000);
  d.settled(Q, id, &[], T0 + 2100);
  assert!(actions(&mut d).is_empty());
  assert_eq!(d.poll_timeout(), None);
}

#[test]
fn delayed_and_retried_messages_wait_for_their_time() {
  let mut d = dispatcher(&["e1"], 10, 1);
  d.stored(Q, &[T0 + 30_000], T0);
  assert!(actions(&mut d).is_empty());
  assert_eq!(d.poll_timeout(), Some(T0 + 30_000));
  d.poll(T0 + 30_000);
  assert!(
    actions(&mut d).is_empty(),
    "it waits the batch timeout from when it became visible"
  );
  d.poll(T0 + 31_000);
  let (id, _, _) = lease(&actions(&mut d));
  d.leased(Q, id, 1, 10, T0 + 31_000);
  // Retried with a 5 s delay.
  d.settled(Q, id, &[T0 + 36_000], T0 + 31_100);
  assert!(actions(&mut d).is_empty());
  d.poll(T0 + 37_000);
  lease(&actions(&mut d));
}

#[test]
fn an_edge_that_does_not_accept_hands_the_batch_on_and_a_lost_edge_releases_it() {
  let mut d = dispatcher(&["e1", "e2"], 1, 5);
  d.stored(Q, &[T0], T0);
  let (id, _, first) = lease(&actions(&mut d));
  d.leased(Q, id, 1, 1, T0);
  d.poll(T0 + 10_000);
  let a = actions(&mut d);
  let Some(Action::Move {
    old,
    id: moved,
    edge,
    ..
  }) = a.first().cloned()
  else {
    panic!("{a:?}");
  };
  assert_eq!(old, id);
  assert_ne!(edge, first);
  // The second edge takes it, then dies mid-batch: released.
  d.accepted(moved);
  d.edge_down(&edge, T0 + 12_000);
  assert_eq!(
    actions(&mut d),
    vec![Action::Release {
      queue: Q.into(),
      id: moved
    }]
  );
  // Settled as a failure: the message comes back and goes out again.
  d.settled(Q, moved, &[T0 + 12_000], T0 + 12_000);
  d.poll(T0 + 17_000);
  let (_, _, edge) = lease(&actions(&mut d));
  assert_eq!(edge, first);
}

#[test]
fn a_batch_no_edge_can_run_is_released() {
  let mut d = dispatcher(&["e1", "e2"], 1, 5);
  d.stored(Q, &[T0], T0);
  let (id, _, _) = lease(&actions(&mut d));
  d.leased(Q, id, 1, 1, T0);
  d.unavailable(id, T0 + 1);
  let a = actions(&mut d);
  let Some(Action::Move { id: second, .. }) = a.first().cloned() else {
    panic!("{a:?}");
  };
  d.unavailable(second, T0 + 2);
  assert_eq!(
    actions(&mut d),
    vec![Action::Release {
      queue: Q.into(),
      id: second
    }]
  );
}

#[test]
fn an_accepted_batch_past_the_run_timeout_is_released_once() {
  let mut d = dispatcher(&["e1"], 1, 5);
  d.stored(Q, &[T0], T0);
  let (id, _, _) = lease(&actions(&mut d));
  d.leased(Q, id, 1, 1, T0);
  d.accepted(id);
  d.poll(T0 + 16 * 60_000);
  assert_eq!(
    actions(&mut d),
    vec![Action::Release {
      queue: Q.into(),
      id
    }]
  );
  d.poll(T0 + 17 * 60_000);
  assert!(actions(&mut d).is_empty());
}

#[test]
fn after_a_restart_a_leased_batch_waits_for_its_edge_then_is_handed_on() {
  let mut d = Dispatcher::new(Config::default(), 0);
  d.edges.extend(["e1".to_string(), "e2".to_string()]);
  d.load(
    Q,
    Some(consumer(10, 5)),
    Backlog {
      visible_at: vec![T0 - 60_000; 3],
      leased: vec![(41, "e1".into())],
    },
    T0,
  );
  assert!(actions(&mut d).is_empty(), "one batch in flight");
  // e1 says it is still consuming 41: it keeps it.
  d.accepted(41);
  d.poll(T0 + 20_000);
  assert!(actions(&mut d).is_empty());
  d.settled(Q, 41, &[], T0 + 21_000);
  let (id, _, _) = lease(&actions(&mut d));
  assert!(id > 41, "ids are not reused");
}

#[test]
fn without_edges_or_consumer_nothing_goes_out() {
  let mut d = dispatcher(&[], 1, 1);
  d.stored(Q, &[T0], T0);
  d.poll(T0 + 5_000);
  assert!(actions(&mut d).is_empty());
  d.edge_up("e1", T0 + 6_000);
  lease(&actions(&mut d));

  let mut d = Dispatcher::new(Config::default(), 0);
  d.edges.insert("e1".into());
  d.stored("acme/other", &[T0], T0);
  d.poll(T0 + 60_000);
  assert!(actions(&mut d).is_empty());
}
