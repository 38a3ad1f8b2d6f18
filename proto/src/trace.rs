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
    let cbor = decompress(bytes)?;
    ciborium::from_reader(&cbor[..]).map_err(|e| malformed(&e))
  }

  /// The events of the batch a
  /// [`Call::EventsLz4`](crate::msg::Call::EventsLz4) carries, each with
  /// `edge`: [`Self::from_lz4`] then [`Self::unpack`], in one pass over
  /// the CBOR where it has the shape edges write (see [`fast`]), which
  /// took a control plane a third of the CPU it spent on an event.
  pub fn unpack_lz4(bytes: &[u8], edge: &str) -> Result<TraceBatch, crate::Error> {
    let cbor = decompress(bytes)?;
    match fast::unpack(&cbor, edge) {
      Some(unpacked) => unpacked,
      None => ciborium::from_reader::<Self, _>(&cbor[..])
        .map_err(|e| malformed(&e))?
        .unpack(edge),
    }
  }

  /// For tests of an edge's batches: [`Self::unpack_lz4`]'s one-pass read
  /// alone, `None` where it would leave the batch to serde.
  #[doc(hidden)]
  pub fn unpack_lz4_in_one_pass(
    bytes: &[u8],
    edge: &str,
  ) -> Option<Result<TraceBatch, crate::Error>> {
    fast::unpack(&decompress(bytes).ok()?, edge)
  }

  /// The events, each with `edge`; an error names the first position
  /// that is not in the table (the batch is then refused whole).
  pub fn unpack(self, edge: &str) -> Result<TraceBatch, crate::Error> {
    let strings = &self.strings;
    let s = |i: u32| {
      strings
        .get(i as usize)
        .cloned()
        .ok_or_else(|| past_table(i, strings.len()))
    };
    // Pushed into a vector of the batch's size: collecting `Result`s would
    // grow it by doubling, each time moving every event made so far.
    let mut events = Vec::with_capacity(self.events.len());
    for PackedEvent(
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
    ) in self.events
    {
      let event = match info {
        PackedInfo::Fetch(PackedFetch(method, url, headers, client, status)) => EventInfo::Fetch {
          method: s(method)?,
          url: s(url)?,
          headers: headers
            .into_iter()
            .map(|(n, v)| Ok((s(n)?, s(v)?)))
            .collect::<Result<_, crate::Error>>()?,
          client_ip: client.map(s).transpose()?,
          status,
        },
        PackedInfo::Other(info) => info,
      };
      events.push(TraceEvent {
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
      });
    }
    Ok(TraceBatch {
      events,
      dropped: self.dropped,
    })
  }
}

fn malformed(e: &dyn std::fmt::Display) -> crate::Error {
  crate::Error::Malformed(format!("a compressed trace batch: {e}"))
}

fn past_table(i: impl std::fmt::Display, len: usize) -> crate::Error {
  crate::Error::Malformed(format!(
    "a trace event names string {i} of a table of {len}"
  ))
}

/// A compressed batch's CBOR. Refused if it says it is larger than a frame
/// may be: what a compressed batch may cost the reader is what an
/// uncompressed one may.
fn decompress(bytes: &[u8]) -> Result<Vec<u8>, crate::Error> {
  let (size, rest) = lz4_flex::block::uncompressed_size(bytes).map_err(|e| malformed(&e))?;
  if size > crate::codec::MAX_FRAME {
    return Err(crate::Error::FrameTooLarge(size));
  }
  lz4_flex::block::decompress(rest, size).map_err(|e| malformed(&e))
}

/// A [`PackedBatch`]'s CBOR read straight into events: the table's strings
/// borrowed from the bytes, each event's fields read in place. Through
/// serde (ciborium) every event was first a [`PackedEvent`], with a call
/// per item and a vector grown per fetch, and the table a `String` each.
/// Only the shape edges write is read here (definite lengths, the map's
/// keys in field order); anything else gives `None`, and the batch is read
/// through serde, which accepts any encoding and says what is wrong.
/// Logs, exceptions and non-fetch events (rare, and nested) are handed to
/// ciborium where they stand.
mod fast {
  use super::EventInfo;
  use super::TraceBatch;
  use super::TraceEvent;

  const UINT: u8 = 0;
  const NINT: u8 = 1;
  const TEXT: u8 = 3;
  const ARRAY: u8 = 4;
  const MAP: u8 = 5;
  const NULL: u8 = 0xf6;

  struct Reader<'a>(&'a [u8]);

  impl<'a> Reader<'a> {
    /// An item's major type and argument (definite lengths only).
    fn head(&mut self) -> Option<(u8, u64)> {
      let (&first, rest) = self.0.split_first()?;
      let (major, minor) = (first >> 5, first & 0x1f);
      let width = match minor {
        0..=23 => {
          self.0 = rest;
          return Some((major, minor.into()));
        }
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => return None,
      };
      let (arg, rest) = rest.split_at_checked(width)?;
      self.0 = rest;
      Some((major, arg.iter().fold(0, |n, b| n << 8 | u64::from(*b))))
    }

    fn expect(&mut self, major: u8) -> Option<u64> {
      match self.head()? {
        (m, arg) if m == major => Some(arg),
        _ => None,
      }
    }

    fn text(&mut self) -> Option<&'a str> {
      let len = usize::try_from(self.expect(TEXT)?).ok()?;
      let (text, rest) = self.0.split_at_checked(len)?;
      self.0 = rest;
      std::str::from_utf8(text).ok()
    }

    /// An array's length; each item takes at least a byte, so a length past
    /// the bytes left is a lie and refused.
    fn count(&mut self) -> Option<usize> {
      let count = usize::try_from(self.expect(ARRAY)?).ok()?;
      (count <= self.0.len()).then_some(count)
    }

    fn key(&mut self, key: &str) -> Option<()> {
      (self.text()? == key).then_some(())
    }

    fn uint(&mut self) -> Option<u64> {
      self.expect(UINT)
    }

    fn int(&mut self) -> Option<i64> {
      match self.head()? {
        (UINT, n) => i64::try_from(n).ok(),
        (NINT, n) => i64::try_from(n).ok().map(|n| -1 - n),
        _ => None,
      }
    }

    /// `null` or an unsigned integer.
    fn opt_uint(&mut self) -> Option<Option<u64>> {
      if self.0.first() == Some(&NULL) {
        self.0 = &self.0[1..];
        return Some(None);
      }
      self.uint().map(Some)
    }

    fn bool(&mut self) -> Option<bool> {
      let (&b, rest) = self.0.split_first()?;
      self.0 = rest;
      match b {
        0xf4 => Some(false),
        0xf5 => Some(true),
        _ => None,
      }
    }

    /// One item through serde, the reader moved past it.
    fn serde<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
      ciborium::from_reader(&mut self.0).ok()
    }

    /// A list, through serde unless empty (nearly every event's logs).
    fn list<T: serde::de::DeserializeOwned>(&mut self) -> Option<Vec<T>> {
      if self.0.first() == Some(&(ARRAY << 5)) {
        self.0 = &self.0[1..];
        return Some(Vec::new());
      }
      self.serde()
    }
  }

  /// A vector for `count` items as a batch declares them, at most 1 MiB
  /// of it up front (as serde does): a count is only checked against the
  /// bytes left, which a lying one could turn into gigabytes of events.
  fn cautious<T>(count: usize) -> Vec<T> {
    Vec::with_capacity(count.min((1 << 20) / std::mem::size_of::<T>().max(1)))
  }

  /// The batch in `cbor`: `None` where it is not in the shape read here,
  /// an error where an event names a string past the table.
  pub(super) fn unpack(cbor: &[u8], edge: &str) -> Option<Result<TraceBatch, crate::Error>> {
    let mut r = Reader(cbor);
    if r.expect(MAP)? != 3 {
      return None;
    }
    r.key("strings")?;
    let count = r.count()?;
    let mut strings = cautious(count);
    for _ in 0..count {
      strings.push(r.text()?);
    }
    r.key("events")?;
    let count = r.count()?;
    let mut events = cautious(count);
    for _ in 0..count {
      match event(&mut r, &strings, edge)? {
        Ok(event) => events.push(event),
        Err(e) => return Some(Err(e)),
      }
    }
    r.key("dropped")?;
    let dropped = r.uint()?;
    if !r.0.is_empty() {
      return None;
    }
    Some(Ok(TraceBatch { events, dropped }))
  }

  fn event(
    r: &mut Reader<'_>,
    strings: &[&str],
    edge: &str,
  ) -> Option<Result<TraceEvent, crate::Error>> {
    // Positions are checked after the whole event is read, so a shape
    // error still falls back to serde's message.
    let mut past = None;
    let mut s = |i: u64| -> String {
      match usize::try_from(i).ok().and_then(|i| strings.get(i)) {
        Some(s) => (*s).to_owned(),
        None => {
          past.get_or_insert(i);
          String::new()
        }
      }
    };
    if r.expect(ARRAY)? != 10 {
      return None;
    }
    let worker = s(r.uint()?);
    let version = s(r.uint()?);
    let timestamp = r.int()?;
    if r.expect(MAP)? != 1 {
      return None;
    }
    let event = match r.text()? {
      "Fetch" => {
        if r.expect(ARRAY)? != 5 {
          return None;
        }
        let method = s(r.uint()?);
        let url = s(r.uint()?);
        let shown = r.count()?;
        let mut headers = cautious(shown);
        for _ in 0..shown {
          if r.expect(ARRAY)? != 2 {
            return None;
          }
          let name = s(r.uint()?);
          headers.push((name, s(r.uint()?)));
        }
        let client_ip = r.opt_uint()?.map(&mut s);
        let status = match r.opt_uint()? {
          Some(status) => Some(u16::try_from(status).ok()?),
          None => None,
        };
        EventInfo::Fetch {
          method,
          url,
          headers,
          client_ip,
          status,
        }
      }
      "Other" => r.serde()?,
      _ => return None,
    };
    let outcome = s(r.uint()?);
    let (cpu_us, wall_us) = (r.uint()?, r.uint()?);
    let logs = r.list()?;
    let exceptions = r.list()?;
    let truncated = r.bool()?;
    if let Some(i) = past {
      return Some(Err(super::past_table(i, strings.len())));
    }
    Some(Ok(TraceEvent {
      worker,
      version,
      edge: edge.to_owned(),
      timestamp,
      event,
      outcome,
      cpu_us,
      wall_us,
      logs,
      exceptions,
      truncated,
    }))
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

  fn lz4(value: &impl Serialize) -> Vec<u8> {
    let mut cbor = Vec::new();
    ciborium::into_writer(value, &mut cbor).unwrap();
    lz4_flex::block::compress_prepend_size(&cbor)
  }

  fn fetch_batch() -> PackedBatch {
    let fetch = |i: u32, client, status| {
      PackedEvent(
        0,
        1,
        -5 + i64::from(i),
        PackedInfo::Fetch(PackedFetch(3, 4, vec![(5, 6), (7, 6)], client, status)),
        2,
        u64::MAX,
        30,
        if i == 1 {
          vec![LogLine {
            level: "log".into(),
            message: "h\u{e9}llo".into(),
            timestamp: 9,
          }]
        } else {
          vec![]
        },
        vec![],
        i == 2,
      )
    };
    let mut rpc = rpc_batch(1).events.remove(0);
    rpc.8 = vec![ExceptionInfo {
      name: "Error".into(),
      message: "m".into(),
      stack: None,
      timestamp: 1,
    }];
    PackedBatch {
      strings: [
        "w",
        "v",
        "ok",
        "GET",
        "https://a.test/",
        "user-agent",
        "x",
        "referer",
      ]
      .map(String::from)
      .to_vec(),
      events: vec![
        fetch(0, Some(6), Some(200)),
        fetch(1, None, None),
        rpc,
        fetch(2, None, Some(599)),
      ],
      dropped: 7,
    }
  }

  #[test]
  fn a_batch_read_in_one_pass_is_the_batch_serde_reads() {
    let batch = fetch_batch();
    let bytes = lz4(&batch);
    let through_serde = batch.clone().unpack("edge").unwrap();
    let one_pass = PackedBatch::unpack_lz4_in_one_pass(&bytes, "edge")
      .expect("the shape edges write")
      .unwrap();
    assert_eq!(one_pass, through_serde);
    assert_eq!(
      PackedBatch::unpack_lz4(&bytes, "edge").unwrap(),
      through_serde
    );
  }

  #[test]
  fn a_batch_in_another_shape_is_read_through_serde() {
    // The same batch with its fields in another order: valid CBOR of a
    // `PackedBatch` that the one-pass read leaves to serde.
    #[derive(Serialize)]
    struct Reordered<'a> {
      dropped: u64,
      strings: &'a [String],
      events: &'a [PackedEvent],
    }
    let batch = fetch_batch();
    let bytes = lz4(&Reordered {
      dropped: batch.dropped,
      strings: &batch.strings,
      events: &batch.events,
    });
    assert!(PackedBatch::unpack_lz4_in_one_pass(&bytes, "e").is_none());
    assert_eq!(
      PackedBatch::unpack_lz4(&bytes, "e").unwrap(),
      batch.unpack("e").unwrap()
    );
    // Not a batch at all: serde says what is wrong.
    let e = PackedBatch::unpack_lz4(&lz4(&"hello"), "e").unwrap_err();
    assert!(
      e.to_string()
        .starts_with("malformed message: a compressed trace batch: "),
      "{e}"
    );
  }

  #[test]
  fn a_batch_that_declares_more_events_than_it_holds_is_refused() {
    // A map of three: `strings` (none), then `events` declared a million
    // long over a million bytes that are no events.
    let mut cbor = vec![0xa3, 0x67];
    cbor.extend_from_slice(b"strings");
    cbor.extend_from_slice(&[0x80, 0x66]);
    cbor.extend_from_slice(b"events");
    cbor.extend_from_slice(&[0x1a | 0x80, 0x00, 0x0f, 0x42, 0x40]);
    cbor.extend(std::iter::repeat_n(0u8, 1_000_000));
    let bytes = lz4_flex::block::compress_prepend_size(&cbor);
    assert!(PackedBatch::unpack_lz4_in_one_pass(&bytes, "e").is_none());
    let e = PackedBatch::unpack_lz4(&bytes, "e").unwrap_err();
    assert!(
      e.to_string()
        .starts_with("malformed message: a compressed trace batch: "),
      "{e}"
    );
  }

  #[test]
  fn a_position_past_the_table_refuses_the_batch_read_in_one_pass() {
    let mut batch = fetch_batch();
    batch.events[3].3 = PackedInfo::Fetch(PackedFetch(3, 40, vec![], None, None));
    let e = PackedBatch::unpack_lz4(&lz4(&batch), "e").unwrap_err();
    assert_eq!(
      e.to_string(),
      "malformed message: a trace event names string 40 of a table of 8"
    );
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
