//! The control channel's framing and messages, both directions: whatever
//! the bytes and however they are chunked, the decoder does not panic, gives
//! the same answers for any chunking, and a message it accepts encodes back
//! to a frame that decodes to the same message.
#![no_main]

use isola_proto::codec::encode;
use isola_proto::codec::Decoder;
use isola_proto::msg::ToControl;
use isola_proto::msg::ToEdge;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What a decoder makes of `data` pushed in pieces of `chunk` bytes:
/// each message re-encoded, then the error if one stopped it.
fn run<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(
  data: &[u8],
  chunk: usize,
) -> (Vec<Vec<u8>>, Option<String>) {
  let mut decoder = Decoder::new();
  let mut out = Vec::new();
  for piece in data.chunks(chunk.max(1)) {
    decoder.push(piece);
    loop {
      match decoder.decode::<T>() {
        Ok(Some(msg)) => {
          let frame = encode(&msg);
          let mut again = Decoder::new();
          again.push(&frame);
          let back: T = again
            .decode()
            .expect("an encoded message decodes")
            .expect("a whole frame is there");
          assert_eq!(back, msg, "a message survives encode and decode");
          assert_eq!(encode(&back), frame, "re-encoding is stable");
          out.push(frame);
        }
        Ok(None) => break,
        Err(e) => return (out, Some(e.to_string())),
      }
    }
  }
  (out, None)
}

fn check<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) {
  let whole = run::<T>(data, data.len());
  let chunk = usize::from(data.first().copied().unwrap_or(1) % 16) + 1;
  assert_eq!(run::<T>(data, chunk), whole, "chunking changes nothing");
}

fuzz_target!(|data: &[u8]| {
  check::<ToEdge>(data);
  check::<ToControl>(data);
});
