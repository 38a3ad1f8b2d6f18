//! An upload body as the API receives it: multipart/form-data parsed with
//! `multer` (the parser axum's `Multipart` uses), each part named as the
//! API names it (field name, else file name), then the static upload
//! check. Nothing panics; an accepted upload's manifest lists exactly the
//! parts sent (sorted, with their sizes and hashes), names its main module
//! among them, and its canonical form is a fixed point.
#![no_main]

use bytes::Bytes;
use isola_proto::manifest::sha256_hex;
use isola_proto::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

const BOUNDARY: &str = "isola-fuzz";

fn parts(body: &[u8]) -> Option<Vec<(String, Bytes)>> {
  let body = Bytes::copy_from_slice(body);
  let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
  let mut multipart = multer::Multipart::new(stream, BOUNDARY);
  futures::executor::block_on(async {
    let mut out = Vec::new();
    while let Some(field) = multipart.next_field().await.ok()? {
      let name = field
        .name()
        .filter(|n| !n.is_empty())
        .or_else(|| field.file_name().filter(|n| !n.is_empty()))
        .map(str::to_string)?;
      let bytes = field.bytes().await.ok()?;
      out.push((name, bytes));
    }
    Some(out)
  })
}

fuzz_target!(|data: &[u8]| {
  let Some(mut parts) = parts(data) else {
    return;
  };
  let metadata = parts
    .iter()
    .position(|(n, _)| n == "metadata")
    .map(|i| parts.remove(i).1);
  let sent: Vec<(String, Bytes)> = {
    let mut s = parts.clone();
    s.sort_by(|a, b| a.0.cmp(&b.0));
    s
  };
  let Ok(upload) = isola_proto::upload::check("acct--worker", metadata.as_deref(), parts) else {
    return;
  };
  let m = &upload.manifest;
  assert_eq!(m.modules.len(), sent.len());
  for (module, (name, bytes)) in m.modules.iter().zip(&sent) {
    assert_eq!(&module.name, name);
    assert_eq!(module.size, bytes.len() as u64);
    assert_eq!(module.sha256, sha256_hex(bytes));
  }
  assert!(m.modules.iter().any(|x| x.name == m.main_module));
  let canonical = m.canonical_json();
  let again: Manifest = serde_json::from_slice(&canonical).expect("the canonical form parses");
  assert_eq!(again.canonical_json(), canonical);
});
