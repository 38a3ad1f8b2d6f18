//! Framing: a 4-byte big-endian length, then the message in CBOR (self
//! describing, so JSON vars and raw module bytes both travel as they are).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::manifest::MAX_VERSION_BYTES;
use crate::Error;

/// Largest frame accepted: one version's bundle (its modules, at most
/// [`MAX_VERSION_BYTES`], plus its manifest, which names at most
/// [`MAX_MODULES`](crate::manifest::MAX_MODULES) modules of up to 1 KiB
/// names) with room to spare. Every bundle travels in a frame of its own, so
/// catching up on any number of versions never needs a larger one.
pub const MAX_FRAME: usize = MAX_VERSION_BYTES + (4 << 20);

/// `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
  frame(|out| ciborium::into_writer(msg, out).expect("writing to a Vec cannot fail"))
}

/// One frame of the message `write` appends (its CBOR).
pub fn frame(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
  let mut out = vec![0; 4];
  write(&mut out);
  let len = u32::try_from(out.len() - 4).expect("frames stay below 4 GiB");
  out[..4].copy_from_slice(&len.to_be_bytes());
  out
}

/// Reassembles frames from bytes as they arrive, in any chunking.
#[derive(Debug, Default)]
pub struct Decoder {
  buf: Vec<u8>,
}

impl Decoder {
  pub fn new() -> Self {
    Self::default()
  }

  pub fn push(&mut self, bytes: &[u8]) {
    self.buf.extend_from_slice(bytes);
  }

  /// The next whole message, if one has arrived.
  pub fn decode<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
    if self.buf.len() < 4 {
      return Ok(None);
    }
    let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
      return Err(Error::FrameTooLarge(len));
    }
    if self.buf.len() < 4 + len {
      return Ok(None);
    }
    let msg =
      ciborium::from_reader(&self.buf[4..4 + len]).map_err(|e| Error::Malformed(e.to_string()))?;
    self.buf.drain(..4 + len);
    Ok(Some(msg))
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::manifest::MAX_MODULES;
  use crate::msg::*;

  #[test]
  fn frames_survive_any_chunking() {
    let msgs = vec![
      ToEdge::Ping,
      ToEdge::Bundle(VersionBundle {
        manifest: br#"{"worker":"acme_api"}"#.to_vec(),
        modules: vec![serde_bytes::ByteBuf::from(vec![0u8, 1, 2, 255])],
      }),
      ToEdge::State {
        state: DesiredState {
          revision: 7,
          workers: vec![WorkerDeployment {
            name: "acme_api".into(),
            versions: vec![Split {
              hash: "ab".repeat(32),
              percentage: 100,
            }],
            secrets: [("TOKEN".to_string(), "s3cret".to_string())].into(),
          }],
          routes: vec![Route {
            pattern: "api.test/*".into(),
            worker: "acme_api".into(),
          }],
        },
      },
      ToEdge::UsageStored { id: "b1".into() },
    ];
    let bytes: Vec<u8> = msgs.iter().flat_map(encode).collect();
    for chunk in [1, 3, 7, bytes.len()] {
      let mut decoder = Decoder::new();
      let mut got = Vec::new();
      for piece in bytes.chunks(chunk) {
        decoder.push(piece);
        while let Some(msg) = decoder.decode::<ToEdge>().unwrap() {
          got.push(msg);
        }
      }
      assert_eq!(got, msgs, "chunk size {chunk}");
    }
  }

  #[test]
  fn usage_records_keep_their_flat_form_on_the_wire_and_on_disk() {
    let record = UsageRecord {
      worker: "acme_api".into(),
      version: "ab".repeat(32),
      start: 1,
      end: 2,
      usage: Usage {
        requests: 3,
        errors: 1,
        cpu_us: 1500,
        wall_us: 9000,
        ingress_bytes: 10,
        egress_bytes: 20,
        subrequests: 2,
        kv_reads: 5,
        kv_writes: 4,
        kv_deletes: 3,
        kv_lists: 2,
        queue_ops: 7,
      },
    };
    let msg = ToControl::Usage(UsageBatch {
      id: "b1".into(),
      records: vec![record.clone()],
    });
    let mut decoder = Decoder::new();
    decoder.push(&encode(&msg));
    assert_eq!(decoder.decode::<ToControl>().unwrap(), Some(msg));
    // The edge's spool files written before `Usage` existed still read.
    let json = serde_json::to_value(&record).unwrap();
    assert_eq!(json["requests"], 3);
    assert_eq!(json["cpu_us"], 1500);
    assert_eq!(serde_json::from_value::<UsageRecord>(json).unwrap(), record);
  }

  #[test]
  fn usage_from_an_edge_that_predates_storage_counters_still_reads() {
    // A record as an older edge spooled (JSON) and sent (CBOR) it.
    let old = serde_json::json!({
      "worker": "acme_api", "version": "h1", "start": 1, "end": 2,
      "requests": 3, "errors": 0, "cpu_us": 1500, "wall_us": 9000,
      "ingress_bytes": 10, "egress_bytes": 20, "subrequests": 2,
    });
    let want = UsageRecord {
      worker: "acme_api".into(),
      version: "h1".into(),
      start: 1,
      end: 2,
      usage: Usage {
        requests: 3,
        cpu_us: 1500,
        wall_us: 9000,
        ingress_bytes: 10,
        egress_bytes: 20,
        subrequests: 2,
        ..Usage::default()
      },
    };
    let spooled: UsageBatch =
      serde_json::from_value(serde_json::json!({"id": "b0", "records": [old]})).unwrap();
    assert_eq!(spooled.records, std::slice::from_ref(&want));
    let mut decoder = Decoder::new();
    decoder.push(&encode(
      &serde_json::json!({"Usage": {"id": "b0", "records": [old]}}),
    ));
    match decoder.decode::<ToControl>().unwrap() {
      Some(ToControl::Usage(batch)) => assert_eq!(batch.records, [want]),
      other => panic!("{other:?}"),
    }
    // And one with them keeps them.
    let mut new = old.clone();
    new["kv_reads"] = 4.into();
    new["queue_ops"] = 6.into();
    let record: UsageRecord = serde_json::from_value(new).unwrap();
    assert_eq!((record.usage.kv_reads, record.usage.queue_ops), (4, 6));
  }

  #[test]
  fn the_largest_version_fits_in_one_frame() {
    let name = |i: usize| format!("{i:04}/{}.js", "n".repeat(1015));
    let manifest = serde_json::to_vec(&serde_json::json!({
      "modules": (0..MAX_MODULES).map(|i| serde_json::json!({
        "name": name(i), "sha256": "ab".repeat(32), "size": MAX_VERSION_BYTES / MAX_MODULES,
      })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let per_module = MAX_VERSION_BYTES / MAX_MODULES;
    let bundle = ToEdge::Bundle(VersionBundle {
      manifest,
      modules: (0..MAX_MODULES)
        .map(|_| serde_bytes::ByteBuf::from(vec![7u8; per_module]))
        .collect(),
    });
    let frame = encode(&bundle);
    assert!(frame.len() - 4 <= MAX_FRAME, "{} bytes", frame.len());
    let mut decoder = Decoder::new();
    decoder.push(&frame);
    assert_eq!(decoder.decode::<ToEdge>().unwrap(), Some(bundle));
  }

  #[test]
  fn an_oversized_or_garbled_frame_is_an_error() {
    let mut decoder = Decoder::new();
    decoder.push(&u32::MAX.to_be_bytes());
    assert!(matches!(
      decoder.decode::<ToEdge>(),
      Err(Error::FrameTooLarge(_))
    ));
    let mut decoder = Decoder::new();
    decoder.push(&[0, 0, 0, 2, 0xff, 0xff]);
    assert!(matches!(
      decoder.decode::<ToEdge>(),
      Err(Error::Malformed(_))
    ));
  }
}
