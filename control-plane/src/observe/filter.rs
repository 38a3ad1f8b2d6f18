//! What a tail or a log query keeps: filters given as query parameters,
//! parsed and matched without IO so every rule is a unit test.

use isola_proto::trace::EventInfo;
use isola_proto::trace::TraceEvent;

/// The status classes a filter names; outcomes map onto them as `wrangler
/// tail --status` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
  Ok,
  /// Any outcome but `ok` and `canceled`: `exception`, `exceeded*`, `unknown`.
  Error,
  Canceled,
}

impl Status {
  pub fn parse(s: &str) -> Option<Self> {
    match s {
      "ok" => Some(Self::Ok),
      "error" => Some(Self::Error),
      "canceled" => Some(Self::Canceled),
      _ => None,
    }
  }

  /// The class of an event's outcome.
  pub fn of(outcome: &str) -> Self {
    match outcome {
      "ok" => Self::Ok,
      "canceled" => Self::Canceled,
      _ => Self::Error,
    }
  }

  /// The outcomes of this class that edges report (for SQL filters; any
  /// other outcome not `ok` or `canceled` also counts as an error).
  pub fn is(self, outcome: &str) -> bool {
    Self::of(outcome) == self
  }
}

/// Filters of `GET /v1/workers/{name}/tail`; every one given must match
/// (several values of one filter: any of them).
#[derive(Clone, Debug, PartialEq)]
pub struct TailFilter {
  pub status: Vec<Status>,
  /// Upper case.
  pub method: Vec<String>,
  /// `(lowercase name, value)`; all must be present.
  pub header: Vec<(String, String)>,
  pub client_ip: Vec<String>,
  /// Found in a log line, an exception's name or message, or the URL.
  pub search: Option<String>,
  /// Share of matching events sent, in (0, 1].
  pub sampling_rate: f64,
  /// Version hashes (the API resolves version ids to hashes).
  pub version: Vec<String>,
}

/// Everything, unsampled.
impl Default for TailFilter {
  fn default() -> Self {
    Self {
      status: Vec::new(),
      method: Vec::new(),
      header: Vec::new(),
      client_ip: Vec::new(),
      search: None,
      sampling_rate: 1.0,
      version: Vec::new(),
    }
  }
}

/// Filters of `GET /v1/workers/{name}/logs`, which also pages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogQuery {
  pub status: Vec<Status>,
  pub version: Vec<String>,
  pub search: Option<String>,
  pub since: Option<String>,
  pub until: Option<String>,
  pub limit: Option<String>,
  pub cursor: Option<String>,
}

fn check_sampling_rate(value: &str) -> Result<f64, String> {
  match value.parse::<f64>() {
    Ok(rate) if rate > 0.0 && rate <= 1.0 => Ok(rate),
    _ => Err(format!(
      "sampling_rate={value:?} is not a number in (0, 1]; e.g. 0.1 sends one event in ten"
    )),
  }
}

fn status(value: &str) -> Result<Status, String> {
  Status::parse(value).ok_or_else(|| format!("status={value:?} is not one of ok, error, canceled"))
}

fn search(value: &str) -> Result<Option<String>, String> {
  if value.is_empty() {
    return Err("search= is empty; give the text to look for".into());
  }
  Ok(Some(value.to_string()))
}

impl TailFilter {
  /// From the query's `(key, value)` pairs; a key may repeat.
  pub fn from_pairs(pairs: &[(String, String)]) -> Result<Self, String> {
    let mut filter = Self::default();
    for (key, value) in pairs {
      match key.as_str() {
        "status" => filter.status.push(status(value)?),
        "method" => filter.method.push(value.to_ascii_uppercase()),
        "header" => {
          let (name, v) = value.split_once(':').ok_or_else(|| {
            format!("header={value:?} is not name:value, like header=x-user:alice")
          })?;
          filter
            .header
            .push((name.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        "client_ip" => filter.client_ip.push(value.clone()),
        "search" => filter.search = search(value)?,
        "sampling_rate" => filter.sampling_rate = check_sampling_rate(value)?,
        "version" => filter.version.push(value.clone()),
        other => {
          return Err(format!(
            "unknown filter {other:?}; tail takes status, method, header, client_ip, search, \
             sampling_rate and version"
          ))
        }
      }
    }
    Ok(filter)
  }

  /// Whether `event` passes every filter (sampling aside: see [`keep`]).
  pub fn matches(&self, event: &TraceEvent) -> bool {
    if !self.status.is_empty() && !self.status.contains(&Status::of(&event.outcome)) {
      return false;
    }
    if !self.version.is_empty() && !self.version.contains(&event.version) {
      return false;
    }
    let fetch = match &event.event {
      EventInfo::Fetch {
        method,
        headers,
        client_ip,
        ..
      } => Some((method, headers, client_ip)),
      _ => None,
    };
    if !self.method.is_empty()
      && !fetch.is_some_and(|(m, _, _)| self.method.iter().any(|f| f.eq_ignore_ascii_case(m)))
    {
      return false;
    }
    if !self.header.is_empty()
      && !fetch.is_some_and(|(_, headers, _)| {
        self.header.iter().all(|(name, value)| {
          headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
        })
      })
    {
      return false;
    }
    if !self.client_ip.is_empty()
      && !fetch.is_some_and(|(_, _, ip)| ip.as_ref().is_some_and(|ip| self.client_ip.contains(ip)))
    {
      return false;
    }
    match &self.search {
      Some(text) => contains_text(event, text),
      None => true,
    }
  }
}

impl LogQuery {
  pub fn from_pairs(pairs: &[(String, String)]) -> Result<Self, String> {
    let mut query = Self::default();
    for (key, value) in pairs {
      match key.as_str() {
        "status" => query.status.push(status(value)?),
        "version" => query.version.push(value.clone()),
        "search" => query.search = search(value)?,
        "since" => query.since = Some(value.clone()),
        "until" => query.until = Some(value.clone()),
        "limit" => query.limit = Some(value.clone()),
        "cursor" => query.cursor = Some(value.clone()),
        other => {
          return Err(format!(
            "unknown parameter {other:?}; logs take since, until, status, version, search, \
             limit and cursor"
          ))
        }
      }
    }
    Ok(query)
  }
}

fn contains_text(event: &TraceEvent, text: &str) -> bool {
  (match &event.event {
    EventInfo::Fetch { url, .. } => url.contains(text),
    _ => false,
  }) || event.logs.iter().any(|l| l.message.contains(text))
    || event
      .exceptions
      .iter()
      .any(|e| e.name.contains(text) || e.message.contains(text))
}

/// Head sampling: keep an event at `rate` given `uniform`, a draw from
/// [0, 1). A rate of 1 keeps everything.
pub fn keep(rate: f64, uniform: f64) -> bool {
  rate >= 1.0 || uniform < rate
}

#[cfg(test)]
pub(crate) mod tests {
  use isola_proto::trace::ExceptionInfo;
  use isola_proto::trace::LogLine;

  use super::*;

  pub(crate) fn fetch(outcome: &str, method: &str, url: &str) -> TraceEvent {
    TraceEvent {
      worker: "acme_api".into(),
      version: "h1".into(),
      edge: "edge-0".into(),
      timestamp: 1_700_000_000_000,
      event: EventInfo::Fetch {
        method: method.into(),
        url: url.into(),
        headers: vec![("x-user".into(), "alice".into())],
        client_ip: Some("10.0.0.1".into()),
        status: Some(200),
      },
      outcome: outcome.into(),
      cpu_us: 1500,
      wall_us: 3000,
      logs: vec![LogLine {
        level: "log".into(),
        message: "hello from the handler".into(),
        timestamp: 1_700_000_000_001,
      }],
      exceptions: vec![],
      truncated: false,
    }
  }

  fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
    q.iter()
      .map(|(k, v)| (k.to_string(), v.to_string()))
      .collect()
  }

  fn filter(q: &[(&str, &str)]) -> TailFilter {
    TailFilter::from_pairs(&pairs(q)).unwrap()
  }

  #[test]
  fn statuses_group_outcomes() {
    for outcome in [
      "exception",
      "exceededCpu",
      "exceededMemory",
      "exceededWall",
      "exceededResources",
      "unknown",
    ] {
      assert_eq!(Status::of(outcome), Status::Error, "{outcome}");
    }
    assert_eq!(Status::of("ok"), Status::Ok);
    assert_eq!(Status::of("canceled"), Status::Canceled);
    let errors = filter(&[("status", "error")]);
    assert!(errors.matches(&fetch("exceededCpu", "GET", "https://a.test/")));
    assert!(!errors.matches(&fetch("ok", "GET", "https://a.test/")));
    let either = filter(&[("status", "ok"), ("status", "canceled")]);
    assert!(either.matches(&fetch("ok", "GET", "https://a.test/")));
    assert!(either.matches(&fetch("canceled", "GET", "https://a.test/")));
    assert!(!either.matches(&fetch("exception", "GET", "https://a.test/")));
  }

  #[test]
  fn request_filters() {
    let e = fetch("ok", "POST", "https://a.test/orders");
    assert!(filter(&[]).matches(&e));
    assert!(filter(&[("method", "post")]).matches(&e));
    assert!(filter(&[("method", "GET"), ("method", "POST")]).matches(&e));
    assert!(!filter(&[("method", "GET")]).matches(&e));
    assert!(filter(&[("header", "X-User: alice")]).matches(&e));
    assert!(!filter(&[("header", "x-user:bob")]).matches(&e));
    assert!(!filter(&[("header", "x-user:alice"), ("header", "x-b:1")]).matches(&e));
    assert!(filter(&[("client_ip", "10.0.0.1")]).matches(&e));
    assert!(!filter(&[("client_ip", "10.0.0.2")]).matches(&e));
    assert!(filter(&[("version", "h1")]).matches(&e));
    assert!(!filter(&[("version", "h2")]).matches(&e));
    // Request filters never match other kinds of events.
    let mut cron = e.clone();
    cron.event = EventInfo::Scheduled {
      cron: "* * * * *".into(),
      scheduled_time: 0,
    };
    assert!(!filter(&[("method", "POST")]).matches(&cron));
    assert!(filter(&[("status", "ok")]).matches(&cron));
  }

  #[test]
  fn search_looks_in_logs_exceptions_and_the_url() {
    let mut e = fetch("exception", "GET", "https://a.test/orders/42");
    e.exceptions.push(ExceptionInfo {
      name: "TypeError".into(),
      message: "x is undefined".into(),
      stack: None,
      timestamp: 0,
    });
    for text in ["orders/42", "from the handler", "TypeError", "is undefined"] {
      assert!(filter(&[("search", text)]).matches(&e), "{text}");
      let stored = crate::observe::message::StoredMessage::from(&e);
      assert!(stored.search_text().contains(text), "{text}");
    }
    assert!(!filter(&[("search", "nowhere")]).matches(&e));
  }

  #[test]
  fn bad_filters_say_what_is_wrong() {
    for (q, want) in [
      (vec![("status", "fine")], "ok, error, canceled"),
      (vec![("sampling_rate", "0")], "(0, 1]"),
      (vec![("sampling_rate", "1.5")], "(0, 1]"),
      (vec![("sampling_rate", "x")], "(0, 1]"),
      (vec![("header", "novalue")], "name:value"),
      (vec![("search", "")], "empty"),
      (vec![("colour", "red")], "unknown filter"),
    ] {
      let err = TailFilter::from_pairs(&pairs(&q)).unwrap_err();
      assert!(err.contains(want), "{q:?}: {err}");
    }
    assert_eq!(filter(&[("sampling_rate", "0.25")]).sampling_rate, 0.25);
    assert_eq!(filter(&[]).sampling_rate, 1.0);
    let err = LogQuery::from_pairs(&pairs(&[("method", "GET")])).unwrap_err();
    assert!(err.contains("unknown parameter"), "{err}");
  }

  #[test]
  fn sampling_keeps_its_share() {
    assert!(keep(1.0, 0.999_999));
    assert!(keep(0.1, 0.05));
    assert!(!keep(0.1, 0.1));
    // Over an even spread of draws, a rate keeps its share exactly.
    let kept = (0..1000)
      .filter(|i| keep(0.1, f64::from(*i) / 1000.0))
      .count();
    assert_eq!(kept, 100);
  }
}
