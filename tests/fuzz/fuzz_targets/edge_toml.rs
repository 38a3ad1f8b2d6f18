//! `edge.toml` from arbitrary text: parsing and checking never panic; an
//! error names the line or the section (`line N: …`, `[section] …`); and a
//! config that parses serialises to TOML that parses again, to the same
//! serialisation (a fixed point, compared as text so NaN vars count too).
#![no_main]

use std::path::Path;

use isola_proto::config::edge::EdgeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
  let Ok(text) = std::str::from_utf8(data) else {
    return;
  };
  let base = Path::new("/etc/isola");
  let config = match EdgeConfig::parse(text, base) {
    Ok(config) => config,
    Err(e) => {
      assert!(
        e.starts_with("line ") || e.starts_with('['),
        "the error names neither a line nor a section: {e}"
      );
      return;
    }
  };
  let _ = config.node_maxima();
  let written = toml::to_string(&config).expect("a parsed config serialises");
  let again = EdgeConfig::parse(&written, base)
    .unwrap_or_else(|e| panic!("the serialised config does not parse ({e}):\n{written}"));
  assert_eq!(
    toml::to_string(&again).expect("serialises"),
    written,
    "serialise → parse → serialise is a fixed point"
  );
});
