//! A manifest from arbitrary JSON: parsing does not panic, and the
//! canonical form is a fixed point — canonical(parse(canonical(m))) ==
//! canonical(m) — so the control plane and edges compute one version id.
#![no_main]

use isola_proto::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
  let Ok(manifest) = serde_json::from_slice::<Manifest>(data) else {
    return;
  };
  let _ = manifest.limits.validate();
  let canonical = manifest.canonical_json();
  let again: Manifest =
    serde_json::from_slice(&canonical).expect("the canonical form parses as a manifest");
  assert_eq!(
    String::from_utf8_lossy(&again.canonical_json()),
    String::from_utf8_lossy(&canonical),
    "the canonical form is a fixed point"
  );
  assert_eq!(again.version_id(), manifest.version_id());
});
