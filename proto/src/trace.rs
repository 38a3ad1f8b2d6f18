//! Trace events: one per invocation (fetch, scheduled, queue, RPC), for
//! live tail, invocation logs and analytics. Shaped after the messages of
//! `wrangler tail`. Unlike usage, events are best effort: an edge buffers a
//! bounded number, samples when it overflows, and counts what it drops.

use serde::Deserialize;
use serde::Serialize;

/// Log bytes kept per invocation; past it the event says `truncated`.
pub const MAX_LOG_BYTES: usize = 128 * 1024;

/// What started an invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum EventInfo {
  Fetch {
    method: String,
    url: String,
    /// Selected request headers (lowercase names), as tail shows them.
    headers: Vec<(String, String)>,
    /// The client's address, if the edge knows it.
    client_ip: Option<String>,
    /// The response status, if one was sent.
    status: Option<u16>,
  },
  Scheduled {
    cron: String,
    /// ms since the Unix epoch.
    scheduled_time: i64,
  },
  Queue {
    queue: String,
    batch_size: u32,
  },
  /// A service binding's RPC call.
  Rpc {
    method: String,
  },
}

/// One `console.*` call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
  /// `log`, `debug`, `info`, `warn` or `error`.
  pub level: String,
  pub message: String,
  /// ms since the Unix epoch.
  pub timestamp: i64,
}

/// An uncaught exception of the invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionInfo {
  pub name: String,
  pub message: String,
  pub stack: Option<String>,
  /// ms since the Unix epoch.
  pub timestamp: i64,
}

/// One invocation, as observers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
  /// Edge name of the worker.
  pub worker: String,
  /// Manifest hash of the version.
  pub version: String,
  /// The edge it ran on (filled in by the edge before shipping).
  pub edge: String,
  /// When the invocation started, ms since the Unix epoch.
  pub timestamp: i64,
  pub event: EventInfo,
  /// `ok`, `exception`, `exceededCpu`, `exceededMemory`, `exceededWall`,
  /// `exceededResources`, `canceled`, `unknown` (tail's names).
  pub outcome: String,
  pub cpu_us: u64,
  pub wall_us: u64,
  pub logs: Vec<LogLine>,
  pub exceptions: Vec<ExceptionInfo>,
  /// Logs past [`MAX_LOG_BYTES`] were left out.
  pub truncated: bool,
}

/// Events shipped together on the edge's event stream, with how many the
/// edge dropped since the last batch (buffer full).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceBatch {
  pub events: Vec<TraceEvent>,
  pub dropped: u64,
}

/// Events as edges send them (`Call::Events`): every distinct string of
/// the batch once, in `strings`, and each event as an array of numbers
/// that name them by position. Field names, and the worker, version, URL
/// and headers that neighbouring events repeat, made up most of a
/// [`TraceBatch`]'s bytes; this form is several times smaller, so the
/// edge encodes, encrypts and sends that much less per event. The edge
/// that sent it is the connection's, never a field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBatch {
  pub strings: Vec<String>,
  pub events: Vec<PackedEvent>,
  pub dropped: u64,
}

/// One event of a [`PackedBatch`], serialized as an array; `u32`s are
/// positions in the batch's `strings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedEvent(
  /// `worker`
  pub u32,
  /// `version`
  pub u32,
  /// `timestamp`
  pub i64,
  /// `event`
  pub PackedInfo,
  /// `outcome`
  pub u32,
  /// `cpu_us`
  pub u64,
  /// `wall_us`
  pub u64,
  /// `logs`
  pub Vec<LogLine>,
  /// `exceptions`
  pub Vec<ExceptionInfo>,
  /// `truncated`
  pub bool,
);

/// A packed event's [`EventInfo`]: fetches (nearly every event) by
/// position, the rest as they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackedInfo {
  Fetch(PackedFetch),
  Other(EventInfo),
}

/// [`EventInfo::Fetch`] by position: method, URL, headers as (name,
/// value) pairs, client address, status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedFetch(
  pub u32,
  pub u32,
  pub Vec<(u32, u32)>,
  pub Option<u32>,
  pub Option<u16>,
);

impl PackedBatch {
  /// The batch a [`Call::EventsLz4`](crate::msg::Call::EventsLz4) carries.
  /// Refused if it says it is larger than a frame may be: what a
  /// compressed batch may cost the reader is what an uncompressed one may.
  pub fn from_lz4(bytes: &[u8]) -> Result<Self, crate::Error> {
    let malformed =
      |e: &dyn std::fmt::Display| crate::Error::Malformed(format!("a compressed trace batch: {e}"));
    let (size, rest) = lz4_flex::block::uncompressed_size(bytes).map_err(|e| malformed(&e))?;
    if size > crate::codec::MAX_FRAME {
      return Err(crate::Error::FrameTooLarge(size));
    }
    let cbor = lz4_flex::block::decompress(rest, size).map_err(|e| malformed(&e))?;
    ciborium::from_reader(&cbor[..]).map_err(|e| malformed(&e))
  }

  /// The events, each with `edge`; an error names the first position
  /// that is not in the table (the batch is then refused whole).
  pub fn unpack(self, edge: &str) -> Result<TraceBatch, crate::Error> {
    let strings = &self.strings;
    let s = |i: u32| {
      strings.get(i as usize).cloned().ok_or_else(|| {
        crate::Error::Malformed(format!(
          "a trace event names string {i} of a table of {}",
          strings.len()
        ))
      })
    };
    let events = self
      .events
      .into_iter()
      .map(
        |PackedEvent(
          worker,
          version,
          timestamp,
          info,
          outcome,
          cpu,
          wall,
          logs,
          exceptions,
          truncated,
        )| {
          let event = match info {
            PackedInfo::Fetch(PackedFetch(method, url, headers, client, status)) => {
              EventInfo::Fetch {
                method: s(method)?,
                url: s(url)?,
                headers: headers
                  .into_iter()
                  .map(|(n, v)| Ok((s(n)?, s(v)?)))
                  .collect::<Result<_, crate::Error>>()?,
                client_ip: client.map(s).transpose()?,
                status,
              }
            }
            PackedInfo::Other(info) => info,
          };
          Ok(TraceEvent {
            worker: s(worker)?,
            version: s(version)?,
            edge: edge.to_string(),
            timestamp,
            event,
            outcome: s(outcome)?,
            cpu_us: cpu,
            wall_us: wall,
            logs,
            exceptions,
            truncated,
          })
        },
      )
      .collect::<Result<_, crate::Error>>()?;
    Ok(TraceBatch {
      events,
      dropped: self.dropped,
    })
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_position_past_the_table_refuses_the_batch() {
    let batch = PackedBatch {
      strings: vec!["w".into(), "v".into()],
      events: vec![PackedEvent(
        0,
        1,
        5,
        PackedInfo::Other(EventInfo::Rpc { method: "m".into() }),
        2,
        1,
        1,
        vec![],
        vec![],
        false,
      )],
      dropped: 0,
    };
    let e = batch.unpack("e").unwrap_err();
    assert_eq!(
      e.to_string(),
      "malformed message: a trace event names string 2 of a table of 2"
    );
  }

  fn rpc_batch(events: usize) -> PackedBatch {
    let event = |i: usize| {
      PackedEvent(
        0,
        1,
        1_764_700_000_000 + i as i64,
        PackedInfo::Other(EventInfo::Rpc { method: "m".into() }),
        2,
        20 + i as u64 % 7,
        30,
        vec![],
        vec![],
        false,
      )
    };
    PackedBatch {
      strings: vec!["w".into(), "v".into(), "ok".into()],
      events: (0..events).map(event).collect(),
      dropped: 3,
    }
  }

  #[test]
  fn a_compressed_batch_reads_back_as_the_batch_written() {
    let batch = rpc_batch(1000);
    let frame = crate::msg::Call::events_frame(|out| ciborium::into_writer(&batch, out).unwrap());
    let plain = crate::codec::encode(&crate::msg::Call::Events(batch.clone()));
    assert!(
      frame.len() * 4 < plain.len(),
      "{} bytes compressed, {} plain",
      frame.len(),
      plain.len()
    );
    let mut decoder = crate::codec::Decoder::new();
    decoder.push(&frame);
    let Some(crate::msg::Call::EventsLz4(bytes)) = decoder.decode().unwrap() else {
      panic!("not a Call::EventsLz4");
    };
    assert_eq!(PackedBatch::from_lz4(&bytes).unwrap(), batch);
  }

  #[test]
  fn a_compressed_batch_that_lies_is_refused() {
    let cbor = {
      let mut out = Vec::new();
      ciborium::into_writer(&rpc_batch(10), &mut out).unwrap();
      out
    };
    let good = lz4_flex::block::compress_prepend_size(&cbor);
    // Larger than a frame may be: refused before anything is allocated.
    let mut huge = good.clone();
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
      PackedBatch::from_lz4(&huge),
      Err(crate::Error::FrameTooLarge(_))
    ));
    // Smaller than what it holds, cut short, or no size at all.
    let mut small = good.clone();
    small[..4].copy_from_slice(&10u32.to_le_bytes());
    for bad in [&small[..], &good[..good.len() / 2], &good[..2]] {
      let e = PackedBatch::from_lz4(bad).unwrap_err().to_string();
      assert!(
        e.starts_with("malformed message: a compressed trace batch: "),
        "{e}"
      );
    }
  }
}
