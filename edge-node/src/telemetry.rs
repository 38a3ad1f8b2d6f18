//! OpenTelemetry spans of the edge's invocations, built on the trace
//! shipper's side from the records the runtime hands over (the request
//! thread only picks ids): one server span per invocation — the child of
//! the request's `traceparent` — and one client span per outgoing
//! `fetch()`, exported over OTLP by a batch span processor.

use std::borrow::Cow;
use std::time::Duration;

use isola_io::telemetry::TelemetryConfig;
use isola_runtime::Started;
use isola_runtime::TraceRecord;
use opentelemetry::trace::SpanContext;
use opentelemetry::trace::SpanId;
use opentelemetry::trace::SpanKind;
use opentelemetry::trace::Status;
use opentelemetry::trace::TraceFlags;
use opentelemetry::trace::TraceId;
use opentelemetry::trace::TraceState;
use opentelemetry::InstrumentationScope;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::BatchSpanProcessor;
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::trace::SpanEvents;
use opentelemetry_sdk::trace::SpanLinks;
use opentelemetry_sdk::trace::SpanProcessor;

/// The edge's span exporter.
pub struct Telemetry {
  processor: BatchSpanProcessor,
  config: TelemetryConfig,
  scope: InstrumentationScope,
}

impl Telemetry {
  /// The exporter `config` asks for, or `None` (no endpoint). Call from
  /// within the edge's tokio runtime.
  pub fn start(config: &TelemetryConfig, edge: &str) -> anyhow::Result<Option<Self>> {
    let resource = isola_io::telemetry::resource(
      config,
      "isola-edge",
      vec![KeyValue::new("isola.edge", edge.to_string())],
    );
    let Some(processor) = isola_io::telemetry::processor(config, &resource)? else {
      return Ok(None);
    };
    tracing::info!(
      endpoint = config.otlp_endpoint.as_deref().unwrap_or_default(),
      sample_ratio = config.ratio(),
      "exporting spans over OTLP"
    );
    Ok(Some(Self {
      processor,
      config: config.clone(),
      scope: InstrumentationScope::builder("isola-edge")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build(),
    }))
  }

  /// Queues the spans of `record` (none if it has no span, its caller did
  /// not sample its trace, or `sample_ratio` leaves the trace out); never
  /// waits.
  pub fn export(&self, record: &TraceRecord, edge: &str) {
    let Some(ctx) = &record.trace.span else {
      return;
    };
    if ctx.flags & 1 == 0 || !self.config.samples(ctx.trace_id) {
      return;
    }
    for span in spans(record, edge, &self.scope) {
      self.processor.on_end(span);
    }
  }

  /// Sends what is queued and stops.
  pub fn shutdown(&self) {
    if let Err(e) = self.processor.shutdown() {
      tracing::debug!(error = %e, "spans were not all exported at shutdown");
    }
  }
}

/// The spans of one invocation: its own, then one per outgoing `fetch()`.
pub fn spans(record: &TraceRecord, edge: &str, scope: &InstrumentationScope) -> Vec<SpanData> {
  let Some(ctx) = &record.trace.span else {
    return Vec::new();
  };
  let trace_id = TraceId::from_bytes(ctx.trace_id.to_be_bytes());
  let flags = TraceFlags::new(ctx.flags);
  let context = |span_id: u64| {
    SpanContext::new(
      trace_id,
      SpanId::from_bytes(span_id.to_be_bytes()),
      flags,
      false,
      TraceState::NONE,
    )
  };
  let end = record.start + Duration::from_micros(record.wall_us);
  let outcome = record.outcome.tail_name();
  let mut attributes = vec![
    KeyValue::new("isola.worker", record.worker.to_string()),
    KeyValue::new("isola.version", record.version.to_string()),
    KeyValue::new("isola.edge", edge.to_string()),
    KeyValue::new("isola.outcome", outcome),
    KeyValue::new("isola.cpu_us", record.cpu_us as i64),
    KeyValue::new("isola.wall_us", record.wall_us as i64),
  ];
  let (name, kind): (Cow<'static, str>, SpanKind) = match &record.trace.event {
    Started::Fetch(f) => {
      attributes.push(KeyValue::new("faas.trigger", "http"));
      attributes.push(KeyValue::new("http.request.method", f.method.to_string()));
      attributes.push(KeyValue::new("url.full", f.url()));
      attributes.push(KeyValue::new("url.path", f.path().to_string()));
      if let Some(status) = f.status {
        attributes.push(KeyValue::new(
          "http.response.status_code",
          i64::from(status),
        ));
      }
      if let Some(client) = f.client {
        attributes.push(KeyValue::new("client.address", client.to_string()));
      }
      (
        format!("fetch {} {}", f.method, f.path()).into(),
        SpanKind::Server,
      )
    }
    Started::Other(info) => match info {
      isola_proto::trace::EventInfo::Scheduled { cron, .. } => {
        attributes.push(KeyValue::new("faas.trigger", "timer"));
        attributes.push(KeyValue::new("faas.cron", cron.clone()));
        ("scheduled".into(), SpanKind::Consumer)
      }
      isola_proto::trace::EventInfo::Queue { queue, batch_size } => {
        attributes.push(KeyValue::new("faas.trigger", "pubsub"));
        attributes.push(KeyValue::new("messaging.destination.name", queue.clone()));
        attributes.push(KeyValue::new(
          "messaging.batch.message_count",
          i64::from(*batch_size),
        ));
        ("queue".into(), SpanKind::Consumer)
      }
      isola_proto::trace::EventInfo::Rpc { method } => {
        attributes.push(KeyValue::new("faas.trigger", "other"));
        attributes.push(KeyValue::new("rpc.method", method.clone()));
        (format!("rpc {method}").into(), SpanKind::Server)
      }
      isola_proto::trace::EventInfo::Fetch { method, url, .. } => {
        attributes.push(KeyValue::new("faas.trigger", "http"));
        (format!("fetch {method} {url}").into(), SpanKind::Server)
      }
    },
  };
  let failed = outcome != "ok";
  let status = match record.trace.exceptions.first() {
    Some(x) => Status::error(format!("{}: {}", x.name, x.message)),
    None if failed => Status::error(outcome),
    None => Status::Unset,
  };
  let mut events = SpanEvents::default();
  for x in record.trace.exceptions.iter().take(16) {
    let mut attributes = vec![
      KeyValue::new("exception.type", x.name.clone()),
      KeyValue::new("exception.message", x.message.clone()),
    ];
    if let Some(stack) = &x.stack {
      attributes.push(KeyValue::new("exception.stacktrace", stack.clone()));
    }
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(x.timestamp).unwrap_or(0));
    events.events.push(opentelemetry::trace::Event::new(
      "exception",
      at,
      attributes,
      0,
    ));
  }
  let mut out = Vec::with_capacity(1 + ctx.subrequests.len());
  out.push(SpanData {
    span_context: context(ctx.span_id),
    parent_span_id: SpanId::from_bytes(ctx.parent_id.to_be_bytes()),
    parent_span_is_remote: ctx.parent_id != 0,
    span_kind: kind,
    name,
    start_time: record.start,
    end_time: end,
    attributes,
    dropped_attributes_count: 0,
    events,
    links: SpanLinks::default(),
    status,
    instrumentation_scope: scope.clone(),
  });
  for sub in &ctx.subrequests {
    let mut attributes = vec![
      KeyValue::new("http.request.method", sub.method.clone()),
      KeyValue::new("url.full", sub.url.clone()),
    ];
    let status = match sub.duration {
      Some(_) if sub.status == 0 => Status::error("fetch failed"),
      Some(_) => {
        attributes.push(KeyValue::new(
          "http.response.status_code",
          i64::from(sub.status),
        ));
        if sub.status >= 500 {
          Status::error("")
        } else {
          Status::Unset
        }
      }
      None => Status::error("the invocation ended first"),
    };
    let path = sub
      .url
      .parse::<http::Uri>()
      .map(|u| u.path().to_string())
      .unwrap_or_default();
    out.push(SpanData {
      span_context: context(sub.span_id),
      parent_span_id: SpanId::from_bytes(ctx.span_id.to_be_bytes()),
      parent_span_is_remote: false,
      span_kind: SpanKind::Client,
      name: format!("fetch {} {path}", sub.method).into(),
      start_time: sub.start,
      end_time: sub.start
        + sub
          .duration
          .unwrap_or_else(|| end.duration_since(sub.start).unwrap_or_default()),
      attributes,
      dropped_attributes_count: 0,
      events: SpanEvents::default(),
      links: SpanLinks::default(),
      status,
      instrumentation_scope: scope.clone(),
    });
  }
  out
}

#[cfg(test)]
mod tests {
  use std::time::SystemTime;

  use isola_runtime::FetchStart;
  use isola_runtime::Outcome;
  use isola_runtime::SpanContext as Ctx;
  use isola_runtime::Trace;

  use super::*;

  #[test]
  fn an_invocation_is_a_server_span_with_a_client_span_per_fetch() {
    let mut start = FetchStart::new(
      &http::Method::GET,
      &"http://a.test/x?q=1".parse().unwrap(),
      &http::HeaderMap::new(),
      None,
    );
    start.status = Some(500);
    let mut trace = Trace::new(Started::Fetch(start));
    let mut ctx = Ctx::start(Some(
      b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ));
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let answered = ctx.subrequest("POST", "http://b.test/y", t0).unwrap();
    ctx.subrequest_done(&answered, 201, t0 + Duration::from_millis(5));
    ctx.subrequest("GET", "http://c.test/", t0).unwrap();
    trace.span = Some(ctx);
    trace.exception("Error", "boom", None);
    let record = TraceRecord {
      worker: "w".into(),
      version: "v1".into(),
      start: t0,
      outcome: Outcome::Exception,
      cpu_us: 5,
      wall_us: 10_000,
      trace: Box::new(trace),
    };
    let scope = InstrumentationScope::builder("test").build();
    let spans = spans(&record, "edge-1", &scope);
    assert_eq!(spans.len(), 3);
    let invocation = &spans[0];
    assert_eq!(invocation.name, "fetch GET /x");
    assert_eq!(invocation.span_kind, SpanKind::Server);
    assert_eq!(
      invocation.span_context.trace_id().to_string(),
      "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(invocation.parent_span_id.to_string(), "b7ad6b7169203331");
    assert_eq!(invocation.status, Status::error("Error: boom"));
    assert_eq!(invocation.events.events.len(), 1);
    assert_eq!(
      invocation
        .end_time
        .duration_since(invocation.start_time)
        .unwrap(),
      Duration::from_millis(10)
    );
    let attr = |s: &SpanData, k: &str| {
      s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == k)
        .map(|kv| kv.value.to_string())
    };
    assert_eq!(
      attr(invocation, "url.full").as_deref(),
      Some("http://a.test/x?q=1")
    );
    assert_eq!(
      attr(invocation, "isola.outcome").as_deref(),
      Some("exception")
    );
    assert_eq!(attr(invocation, "isola.edge").as_deref(), Some("edge-1"));
    let fetch = &spans[1];
    assert_eq!(fetch.name, "fetch POST /y");
    assert_eq!(fetch.span_kind, SpanKind::Client);
    assert_eq!(fetch.parent_span_id, invocation.span_context.span_id());
    assert_eq!(
      format!(
        "00-{}-{}-01",
        fetch.span_context.trace_id(),
        fetch.span_context.span_id()
      ),
      answered
    );
    assert_eq!(
      attr(fetch, "http.response.status_code").as_deref(),
      Some("201")
    );
    assert_eq!(fetch.status, Status::Unset);
    assert_eq!(
      fetch.end_time.duration_since(fetch.start_time).unwrap(),
      Duration::from_millis(5)
    );
    // Not answered before the invocation ended: it ends with it, in error.
    assert_eq!(spans[2].end_time, invocation.end_time);
    assert!(matches!(spans[2].status, Status::Error { .. }));
  }

  #[test]
  fn a_record_without_a_span_has_none() {
    let record = TraceRecord {
      worker: "w".into(),
      version: "v1".into(),
      start: SystemTime::now(),
      outcome: Outcome::Ok,
      cpu_us: 1,
      wall_us: 1,
      trace: Box::new(Trace::new(isola_proto::trace::EventInfo::Rpc {
        method: "m".into(),
      })),
    };
    assert!(spans(&record, "e", &InstrumentationScope::builder("t").build()).is_empty());
  }
}
