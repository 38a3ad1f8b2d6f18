//! How invocations end, and the one place that words limit messages.

use std::time::Duration;

/// How an invocation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
  /// A response was produced.
  Ok,
  /// The handler threw, rejected, or returned something other than a Response.
  Exception,
  CpuLimit,
  MemoryLimit,
  WallLimit,
  SubrequestLimit,
  /// The request body exceeded its size limit (the client's fault: 413).
  RequestBodyLimit,
  /// The response body exceeded its size limit (the worker's fault: 503).
  ResponseBodyLimit,
  /// The isolate stopped (shut down, or another invocation broke a limit).
  Stopped,
  /// The caller went away first: a service binding call whose calling
  /// invocation ended.
  Canceled,
}

impl Outcome {
  /// The metrics label of this outcome.
  pub fn as_str(self) -> &'static str {
    match self {
      Outcome::Ok => "ok",
      Outcome::Exception => "exception",
      Outcome::CpuLimit => "cpu_limit",
      Outcome::MemoryLimit => "memory_limit",
      Outcome::WallLimit => "wall_limit",
      Outcome::SubrequestLimit => "subrequest_limit",
      Outcome::RequestBodyLimit => "request_body_limit",
      Outcome::ResponseBodyLimit => "response_body_limit",
      Outcome::Stopped => "stopped",
      Outcome::Canceled => "canceled",
    }
  }

  /// The name `wrangler tail` shows for this outcome. Limits with no name of
  /// their own there are `exceededResources`; an invocation whose isolate
  /// stopped under it (another invocation broke a limit, or shutdown) was
  /// `canceled`, as one whose caller went away.
  pub fn tail_name(self) -> &'static str {
    match self {
      Outcome::Ok => "ok",
      Outcome::Exception => "exception",
      Outcome::CpuLimit => "exceededCpu",
      Outcome::MemoryLimit => "exceededMemory",
      Outcome::WallLimit => "exceededWall",
      Outcome::SubrequestLimit | Outcome::RequestBodyLimit | Outcome::ResponseBodyLimit => {
        "exceededResources"
      }
      Outcome::Stopped | Outcome::Canceled => "canceled",
    }
  }

  /// Every outcome, for exporters that pre-register label values.
  pub const ALL: [Outcome; 10] = [
    Outcome::Ok,
    Outcome::Exception,
    Outcome::CpuLimit,
    Outcome::MemoryLimit,
    Outcome::WallLimit,
    Outcome::SubrequestLimit,
    Outcome::RequestBodyLimit,
    Outcome::ResponseBodyLimit,
    Outcome::Stopped,
    Outcome::Canceled,
  ];
}

/// A limit an invocation broke, with the limit's value. Its `Display` is the
/// only place limit messages are worded, so nothing has to parse them back:
/// callers match on [`LimitExceeded::outcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
  #[error("cpu limit: the invocation used more than {} ms of CPU time", .0.as_millis())]
  Cpu(Duration),
  /// The limit in bytes (messages show MiB).
  #[error("memory limit: the worker's isolate needed more than {} MiB", .0 >> 20)]
  Memory(u64),
  #[error("wall-clock limit: the invocation ran longer than {} ms", .0.as_millis())]
  Wall(Duration),
  #[error("subrequest limit: more than {0} fetch() calls in one invocation")]
  Subrequests(u32),
  #[error("body limit: the request body is larger than {0} bytes")]
  RequestBody(u64),
  #[error("body limit: the response body is larger than {0} bytes")]
  ResponseBody(u64),
}

impl LimitExceeded {
  /// The outcome an invocation ended by this limit is recorded with.
  pub fn outcome(self) -> Outcome {
    match self {
      Self::Cpu(_) => Outcome::CpuLimit,
      Self::Memory(_) => Outcome::MemoryLimit,
      Self::Wall(_) => Outcome::WallLimit,
      Self::Subrequests(_) => Outcome::SubrequestLimit,
      Self::RequestBody(_) => Outcome::RequestBodyLimit,
      Self::ResponseBody(_) => Outcome::ResponseBodyLimit,
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn body_limits_are_two_outcomes_with_their_own_labels() {
    assert_eq!(
      LimitExceeded::RequestBody(1000).outcome().as_str(),
      "request_body_limit"
    );
    assert_eq!(
      LimitExceeded::ResponseBody(1000).outcome().as_str(),
      "response_body_limit"
    );
    assert_eq!(
      LimitExceeded::RequestBody(1000).to_string(),
      "body limit: the request body is larger than 1000 bytes"
    );
  }

  #[test]
  fn every_outcome_has_a_distinct_label() {
    let labels: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(labels.len(), Outcome::ALL.len());
  }
}
