//! Which V8 thread a new isolate goes to. Loading a worker blocks its
//! thread for milliseconds, and every request to that thread's warm
//! isolates that arrives meanwhile waits behind it. So a new isolate goes
//! to the thread whose warm isolates got the fewest requests lately; the
//! count of isolates (then the caller's own thread) breaks ties. Sans IO:
//! the pool hands in the time and the counters.

use std::time::Duration;
use std::time::Instant;

/// The span of one rate measurement.
const WINDOW: Duration = Duration::from_millis(250);

/// Rates within one of this many equal steps of the busiest thread's count
/// as equal, so that small differences leave the choice to the isolate
/// count.
const STEPS: u64 = 8;

/// Request rates per thread, measured over the last full [`WINDOW`].
#[derive(Debug, Default)]
pub(crate) struct Placement {
  /// When the window in progress began, and each thread's count then.
  window: Option<(Instant, Vec<u64>)>,
  /// Warm requests per thread in the last full window.
  rates: Vec<u64>,
}

impl Placement {
  /// The thread for a new isolate. `served[t]`: requests thread `t`'s
  /// isolates have served after their first (a running count);
  /// `isolates[t]`: isolates on it now; `here`: the calling thread, if it is
  /// one of them.
  pub(crate) fn choose(
    &mut self,
    now: Instant,
    served: &[u64],
    isolates: &[usize],
    here: Option<usize>,
  ) -> usize {
    match &self.window {
      Some((start, before)) if now.duration_since(*start) >= WINDOW => {
        self.rates = served
          .iter()
          .zip(before)
          .map(|(n, b)| n.saturating_sub(*b))
          .collect();
        self.window = Some((now, served.to_vec()));
      }
      Some(_) => {}
      None => self.window = Some((now, served.to_vec())),
    }
    let top = self.rates.iter().copied().max().unwrap_or(0);
    let step = |t: usize| {
      let rate = self.rates.get(t).copied().unwrap_or(0);
      rate * STEPS / (top + 1)
    };
    (0..isolates.len())
      .min_by_key(|&t| (step(t), isolates[t], Some(t) != here))
      .unwrap_or(0)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  const MS: Duration = Duration::from_millis(1);

  #[test]
  fn without_traffic_the_fewest_isolates_win_then_the_own_thread() {
    let mut p = Placement::default();
    let t0 = Instant::now();
    assert_eq!(p.choose(t0, &[0, 0], &[3, 2], Some(0)), 1);
    assert_eq!(p.choose(t0, &[0, 0], &[2, 2], Some(0)), 0);
    assert_eq!(p.choose(t0, &[0, 0], &[2, 2], Some(1)), 1);
    assert_eq!(p.choose(t0, &[0, 0], &[2, 2], None), 0);
  }

  #[test]
  fn a_thread_serving_warm_requests_is_avoided() {
    let mut p = Placement::default();
    let t0 = Instant::now();
    // No full window yet: the isolate count decides.
    assert_eq!(p.choose(t0, &[0, 0], &[1, 5], None), 0);
    // Thread 0's one isolate is hot; thread 1 only loads new workers.
    assert_eq!(p.choose(t0 + 100 * MS, &[100, 0], &[1, 5], None), 0);
    assert_eq!(p.choose(t0 + 250 * MS, &[250, 0], &[1, 6], None), 1);
    // The rates hold until the next window ends.
    assert_eq!(p.choose(t0 + 400 * MS, &[400, 0], &[1, 7], Some(0)), 1);
    // Traffic moves to thread 1: the next window sees it.
    assert_eq!(p.choose(t0 + 500 * MS, &[400, 300], &[1, 8], None), 0);
  }

  #[test]
  fn close_rates_count_as_equal() {
    let mut p = Placement::default();
    let t0 = Instant::now();
    p.choose(t0, &[0, 0], &[1, 1], None);
    // 1000 against 950 requests: within a step, so the isolate count decides.
    assert_eq!(p.choose(t0 + 250 * MS, &[1000, 950], &[1, 4], None), 0);
    // 1000 against 500: thread 1 is clearly quieter.
    let mut p = Placement::default();
    p.choose(t0, &[0, 0], &[1, 1], None);
    assert_eq!(p.choose(t0 + 250 * MS, &[1000, 500], &[1, 4], None), 1);
  }
}
