//! Route patterns: building a table from any patterns does not panic; when
//! it succeeds, a request made from each pattern (its host with the `*`
//! filled in, its path) is routed somewhere, and any host and path can be
//! looked up.
#![no_main]

use isola_proto::routes::RouteTable;
use libfuzzer_sys::fuzz_target;

/// A host and path that `pattern` matches, if it is a valid pattern.
fn example(pattern: &str) -> Option<(String, String)> {
  let slash = pattern.find('/')?;
  let (host, path) = pattern.split_at(slash);
  let host = if let Some(rest) = host.strip_prefix("*.") {
    format!("a.{rest}")
  } else if let Some(rest) = host.strip_prefix('*') {
    rest.to_string()
  } else {
    host.to_string()
  };
  let path = match path.strip_suffix('*') {
    Some(prefix) => format!("{prefix}x"),
    None => path.to_string(),
  };
  Some((host, path))
}

fuzz_target!(|data: &[u8]| {
  let Ok(text) = std::str::from_utf8(data) else {
    return;
  };
  let mut lines = text.split('\n');
  let probe = lines.next().unwrap_or_default();
  let patterns: Vec<&str> = lines.collect();
  let Ok(table) = RouteTable::new(patterns.iter().enumerate().map(|(i, p)| (p.to_string(), i)))
  else {
    // Each pattern alone, so an invalid one does not hide the others.
    for p in &patterns {
      let _ = RouteTable::new([(p.to_string(), 0)]);
    }
    return;
  };
  assert_eq!(table.len(), patterns.len());
  for p in &patterns {
    let (host, path) = example(p).expect("an accepted pattern has a `/`");
    assert!(
      table.lookup(&host, &path).is_some(),
      "{host}{path} matches no route, though it matches {p:?}"
    );
  }
  let (host, path) = probe.split_once('/').unwrap_or((probe, ""));
  let _ = table.lookup(host, &format!("/{path}"));
  let _ = table.lookup(probe, probe);
});
