//! Cron expressions as Cloudflare Cron Triggers read them: five fields, UTC,
//! `* , - /`, month and weekday names, `L`, `W`, `#`, and day-of-week 1–7
//! with 1 = Sunday. Parsing and matching are `saffron`'s (Cloudflare's own
//! parser); this module adds errors that point at the field and the rules
//! the platform puts on top (no `?`, an expression must fire at some time).

use std::time::Duration;

use chrono::DateTime;
use chrono::Utc;

/// Most cron expressions one worker may have.
pub const MAX_CRONS_PER_WORKER: usize = 20;

/// CPU limit of a run of a schedule that fires more than once an hour
/// (Cloudflare's rule), and of any other schedule.
pub const FREQUENT_CPU: Duration = Duration::from_secs(30);
pub const INFREQUENT_CPU: Duration = Duration::from_secs(15 * 60);

const FIELDS: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];
const EXAMPLES: [&str; 5] = [
  "0-59, */5",
  "0-23",
  "1-31, L, 15W",
  "1-12 or JAN-DEC",
  "1-7 (1 = Sunday) or SUN-SAT, 6L, 2#1",
];

/// Why an expression was refused; the text names the field and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cron {expr:?}: {reason}")]
pub struct CronError {
  pub expr: String,
  pub reason: String,
}

/// A parsed expression. Keeps the text byte for byte: it is what the
/// handler sees as `controller.cron`.
#[derive(Clone, Debug)]
pub struct Schedule {
  text: String,
  cron: saffron::Cron,
}

impl PartialEq for Schedule {
  fn eq(&self, other: &Self) -> bool {
    self.text == other.text
  }
}

impl Schedule {
  pub fn parse(text: &str) -> Result<Self, CronError> {
    let error = |reason: String| CronError {
      expr: text.to_string(),
      reason,
    };
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() != 5 {
      return Err(error(format!(
        "expected 5 fields (minute hour day-of-month month day-of-week, in UTC), found {}",
        fields.len()
      )));
    }
    for (i, field) in fields.iter().enumerate() {
      if field.contains('?') {
        return Err(error(format!(
          "the {} field {field:?} uses `?`, which is not supported: use `*`",
          FIELDS[i]
        )));
      }
      // saffron builds a wrong schedule for a wrap-around range with a
      // step (`9-2/2` in months or weekdays panics when it is matched).
      if i >= 3 && field.split(',').any(|part| wraps_with_step(i, part)) {
        return Err(error(format!(
          "the {} field {field:?} has a range that wraps around with a step, which is not \
           supported; list the values or ascending ranges joined with `,` (e.g. `9-2/2` \
           as `9,11,1`)",
          FIELDS[i]
        )));
      }
      // Each field alone, the others `*`: the first that fails is the one
      // to point at (saffron's own error has no position).
      let mut probe = ["*"; 5];
      probe[i] = field;
      if probe.join(" ").parse::<saffron::Cron>().is_err() {
        let hint = if i == 4 && field.split([',', '-', '/', '#']).any(|p| p == "0") {
          "; day of week counts 1-7 from Sunday (use 1 or SUN, not 0)"
        } else {
          ""
        };
        return Err(error(format!(
          "the {} field {field:?} is not valid (e.g. {}){hint}",
          FIELDS[i], EXAMPLES[i]
        )));
      }
    }
    let cron: saffron::Cron = text
      .parse()
      .map_err(|_| error("is not a valid cron expression".into()))?;
    if !cron.any() {
      return Err(error("never fires (no date matches every field)".into()));
    }
    Ok(Self {
      text: text.to_string(),
      cron,
    })
  }

  /// The expression as written.
  pub fn as_str(&self) -> &str {
    &self.text
  }

  /// The first firing strictly after `ms` (ms since the Unix epoch), in ms.
  pub fn next_after(&self, ms: i64) -> Option<i64> {
    let at = DateTime::<Utc>::from_timestamp_millis(ms)?;
    self.cron.next_after(at).map(|t| t.timestamp_millis())
  }

  /// Whether the minute holding `ms` is a firing.
  pub fn contains(&self, ms: i64) -> bool {
    DateTime::<Utc>::from_timestamp_millis(ms).is_some_and(|t| self.cron.contains(t))
  }

  /// CPU limit of a run when the version sets none: Cloudflare gives 30 s
  /// to a schedule that fires more than once an hour and 15 minutes to the
  /// rest. Judged over the first firings from a fixed instant.
  pub fn default_cpu(&self) -> Duration {
    const FROM: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z
    let mut last = None;
    let mut t = FROM;
    for _ in 0..100 {
      let Some(next) = self.next_after(t) else {
        break;
      };
      if last.is_some_and(|l| next - l < 3_600_000) {
        return FREQUENT_CPU;
      }
      last = Some(next);
      t = next;
    }
    INFREQUENT_CPU
  }
}

/// Whether `part` of the month (`field` 3) or day-of-week (4) field is a
/// range that runs backwards (wraps around) and has a step, like `9-2/2`.
fn wraps_with_step(field: usize, part: &str) -> bool {
  const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
  ];
  const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
  let value = |v: &str| -> Option<usize> {
    let names: &[&str] = if field == 3 { &MONTHS } else { &DAYS };
    v.parse().ok().or_else(|| {
      names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(v))
        .map(|i| i + 1)
    })
  };
  let Some((range, _step)) = part.split_once('/') else {
    return false;
  };
  let Some((from, to)) = range.split_once('-') else {
    return false;
  };
  matches!((value(from), value(to)), (Some(a), Some(b)) if a > b)
}

/// Checks a worker's list of expressions: each valid, none repeated, at
/// most [`MAX_CRONS_PER_WORKER`]. The error names the entry (`crons[2]`).
pub fn parse_all(crons: &[String]) -> Result<Vec<Schedule>, String> {
  if crons.len() > MAX_CRONS_PER_WORKER {
    return Err(format!(
      "crons: {} expressions, at most {MAX_CRONS_PER_WORKER} per worker",
      crons.len()
    ));
  }
  let mut out: Vec<Schedule> = Vec::with_capacity(crons.len());
  for (i, text) in crons.iter().enumerate() {
    let schedule = Schedule::parse(text).map_err(|e| format!("crons[{i}]: {e}"))?;
    if out.contains(&schedule) {
      return Err(format!("crons[{i}]: {text:?} is listed twice"));
    }
    out.push(schedule);
  }
  Ok(out)
}

#[cfg(test)]
mod tests {
  use super::*;

  fn ms(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
  }

  #[test]
  fn a_wrap_around_range_with_a_step_is_refused_not_a_panic() {
    // Found by tests/fuzz (cron): saffron panicked matching these.
    for expr in [
      "30 20 2 9-2/2 2",
      "* * * SEP-FEB/2 *",
      "0 0 * * 6-2/2",
      "0 0 * * sat-mon/2",
    ] {
      let err = Schedule::parse(expr).unwrap_err().to_string();
      assert!(err.contains("wraps around with a step"), "{expr}: {err}");
    }
    // Without a step, or ascending, they stay valid and fire.
    for expr in [
      "0 0 * 9-2 *",
      "0 0 * * 6-2",
      "0 0 * 1-12/2 *",
      "* 22-2/3 * * *",
    ] {
      let s = Schedule::parse(expr).unwrap();
      let next = s.next_after(ms("2026-11-29T12:00:00Z")).unwrap();
      assert!(s.contains(next), "{expr}");
    }
  }

  #[test]
  fn cloudflare_examples_fire_when_documented() {
    let every5 = Schedule::parse("*/5 * * * *").unwrap();
    assert_eq!(
      every5.next_after(ms("2026-11-29T12:04:59.900Z")),
      Some(ms("2026-11-29T12:05:00Z"))
    );
    // 1 = Sunday, and names match numbers.
    let sun = Schedule::parse("0 17 * * sun").unwrap();
    let one = Schedule::parse("0 17 * * 1").unwrap();
    let t = ms("2026-11-25T00:00:00Z"); // a Wednesday
    assert_eq!(sun.next_after(t), Some(ms("2026-11-29T17:00:00Z"))); // Sunday
    assert_eq!(sun.next_after(t), one.next_after(t));
    // Last weekday of the month, last Friday, second Monday.
    let lw = Schedule::parse("59 23 LW * *").unwrap();
    assert_eq!(lw.next_after(t), Some(ms("2026-11-30T23:59:00Z")));
    let last_fri = Schedule::parse("0 18 * * 6L").unwrap();
    assert_eq!(last_fri.next_after(t), Some(ms("2026-11-27T18:00:00Z")));
    let second_mon = Schedule::parse("0 9 * * 2#2").unwrap();
    assert_eq!(second_mon.next_after(t), Some(ms("2026-12-14T09:00:00Z")));
    assert!(every5.contains(ms("2026-11-29T12:05:30Z")));
    assert!(!every5.contains(ms("2026-11-29T12:06:00Z")));
  }

  #[test]
  fn errors_point_at_the_field() {
    let err = Schedule::parse("* * * * ?").unwrap_err().to_string();
    assert!(err.contains("day of week") && err.contains('?'), "{err}");
    let err = Schedule::parse("0 0 * * 0").unwrap_err().to_string();
    assert!(
      err.contains("day of week") && err.contains("1 or SUN"),
      "{err}"
    );
    let err = Schedule::parse("61 * * * *").unwrap_err().to_string();
    assert!(err.contains("minute field \"61\""), "{err}");
    let err = Schedule::parse("* 24 * * *").unwrap_err().to_string();
    assert!(err.contains("hour field"), "{err}");
    let err = Schedule::parse("* * * FOO *").unwrap_err().to_string();
    assert!(err.contains("month field"), "{err}");
    let err = Schedule::parse("* * * *").unwrap_err().to_string();
    assert!(
      err.contains("expected 5 fields") && err.contains("found 4"),
      "{err}"
    );
    let err = Schedule::parse("0 0 31 2 *").unwrap_err().to_string();
    assert!(err.contains("never fires"), "{err}");
  }

  #[test]
  fn the_text_is_kept_byte_for_byte() {
    let s = Schedule::parse("*/5  *  * * *").unwrap();
    assert_eq!(s.as_str(), "*/5  *  * * *");
  }

  #[test]
  fn cpu_follows_the_interval() {
    assert_eq!(
      Schedule::parse("* * * * *").unwrap().default_cpu(),
      FREQUENT_CPU
    );
    assert_eq!(
      Schedule::parse("*/30 3 * * *").unwrap().default_cpu(),
      FREQUENT_CPU
    );
    assert_eq!(
      Schedule::parse("0 * * * *").unwrap().default_cpu(),
      INFREQUENT_CPU
    );
    assert_eq!(
      Schedule::parse("0 3 * * MON").unwrap().default_cpu(),
      INFREQUENT_CPU
    );
  }

  #[test]
  fn lists_are_checked_whole() {
    let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(parse_all(&list(&["* * * * *", "0 0 * * *"])).is_ok());
    let err = parse_all(&list(&["* * * * *", "bad"])).unwrap_err();
    assert!(err.starts_with("crons[1]:"), "{err}");
    let err = parse_all(&list(&["* * * * *", "* * * * *"])).unwrap_err();
    assert!(err.contains("twice"), "{err}");
    let many = vec!["* * * * *".to_string(); MAX_CRONS_PER_WORKER + 1];
    assert!(parse_all(&many).unwrap_err().contains("at most"));
  }
}
