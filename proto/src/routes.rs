//! Cloudflare-style route matching: picks the worker for a request by host
//! and path.
//!
//! A pattern is `HOST/PATH`. HOST is an exact name (`alpha.test`), any
//! subdomain at any depth (`*.alpha.test`), or the name and any subdomain
//! (`*alpha.test`). PATH is exact (`/login`) or, ending in `*`, a prefix
//! (`/api/*`, `/*`). When several routes match, the most specific host wins
//! (exact, then the longest wildcard suffix, `*.x` before `*x`), and within
//! that host the most specific path (exact, then the longest prefix).
//!
//! Lookups are hash probes, not scans, so tables of thousands of routes stay
//! cheap: one probe for the exact host, then one per label suffix of the host
//! for wildcards; within a host, one probe for the exact path and one per
//! distinct prefix length.
//!
//! The probes hash with foldhash, seeded per process: every request makes
//! them, SipHash cost several times as much, and the seed keeps hosts that
//! requests or tenants choose from colliding on purpose.

use std::borrow::Cow;

use foldhash::HashMap;

/// Why a route table could not be built; the message names the pattern and
/// how to fix it, since it usually comes straight from a config file.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
  #[error("invalid route pattern `{pattern}`: {reason}")]
  Invalid { pattern: String, reason: String },
  #[error(
    "duplicate route `{pattern}`: it matches the same hosts and paths as route `{first}`; \
     remove one of them"
  )]
  Duplicate { pattern: String, first: String },
}

/// An immutable table from route patterns to targets (usually workers).
#[derive(Debug)]
pub struct RouteTable<T> {
  targets: Vec<T>,
  /// Rules for exact hosts, keyed by the lowercased host.
  exact: HashMap<Box<str>, PathRules>,
  /// Rules for wildcard hosts, keyed by the lowercased suffix after the `*`
  /// (`alpha.test` for both `*.alpha.test` and `*alpha.test`).
  wild: HashMap<Box<str>, WildRules>,
}

impl<T> RouteTable<T> {
  /// Builds a table; fails on the first invalid or duplicate pattern.
  pub fn new(routes: impl IntoIterator<Item = (String, T)>) -> Result<Self, RouteError> {
    let mut table = RouteTable {
      targets: Vec::new(),
      exact: HashMap::default(),
      wild: HashMap::default(),
    };
    // Kept only while building, to name the earlier route in a duplicate error.
    let mut patterns: Vec<String> = Vec::new();
    for (pattern, target) in routes {
      let parsed = parse(&pattern)?;
      let index = table.targets.len();
      let rules = match parsed.host {
        Host::Exact(host) => table.exact.entry(host.into()).or_default(),
        Host::Subdomains(suffix) => &mut table.wild.entry(suffix.into()).or_default().subdomains,
        Host::ApexAndSubdomains(suffix) => {
          &mut table
            .wild
            .entry(suffix.into())
            .or_default()
            .apex_and_subdomains
        }
      };
      if let Some(first) = rules.insert(parsed.path, index) {
        return Err(RouteError::Duplicate {
          pattern,
          first: patterns.swap_remove(first),
        });
      }
      table.targets.push(target);
      patterns.push(pattern);
    }
    Ok(table)
  }

  /// The target of the most specific route matching `host` (which may carry
  /// a `:port` and be in any case) and `path` (without the query string).
  pub fn lookup(&self, host: &str, path: &str) -> Option<&T> {
    let host = normalize_host(host);
    let host: &str = &host;
    let path = if path.is_empty() { "/" } else { path };
    self.lookup_index(host, path).map(|i| &self.targets[i])
  }

  fn lookup_index(&self, host: &str, path: &str) -> Option<usize> {
    if let Some(i) = self.exact.get(host).and_then(|r| r.find(path)) {
      return Some(i);
    }
    if self.wild.is_empty() || host.starts_with('[') {
      return None;
    }
    // The host itself only matches `*host` routes, never `*.host`.
    if let Some(i) = self
      .wild
      .get(host)
      .and_then(|w| w.apex_and_subdomains.find(path))
    {
      return Some(i);
    }
    // Then each proper suffix, longest first: `a.b.c` tries `b.c`, then `c`.
    let mut rest = host;
    while let Some((_, suffix)) = rest.split_once('.') {
      if let Some(w) = self.wild.get(suffix) {
        if let Some(i) = w
          .subdomains
          .find(path)
          .or_else(|| w.apex_and_subdomains.find(path))
        {
          return Some(i);
        }
      }
      rest = suffix;
    }
    None
  }

  /// Number of routes (the serve banner reports it).
  pub fn len(&self) -> usize {
    self.targets.len()
  }

  #[allow(dead_code, reason = "pairs with len(); used by tests")]
  pub fn is_empty(&self) -> bool {
    self.targets.is_empty()
  }
}

/// The two wildcard forms sharing one suffix: `*.x` is tried before `*x`
/// because it names strictly fewer hosts.
#[derive(Debug, Default)]
struct WildRules {
  subdomains: PathRules,
  apex_and_subdomains: PathRules,
}

/// The path rules of one host pattern.
#[derive(Debug, Default)]
struct PathRules {
  exact: HashMap<Box<str>, usize>,
  prefixes: HashMap<Box<str>, usize>,
  /// The distinct prefix lengths, longest first, so the first hit is the
  /// longest matching prefix.
  prefix_lens: Vec<usize>,
}

impl PathRules {
  /// Adds a rule; on a duplicate returns the index of the earlier one.
  fn insert(&mut self, path: Path<'_>, index: usize) -> Option<usize> {
    let (map, key) = match path {
      Path::Exact(p) => (&mut self.exact, p),
      Path::Prefix(p) => (&mut self.prefixes, p),
    };
    if let Some(&first) = map.get(key) {
      return Some(first);
    }
    map.insert(key.into(), index);
    if let Path::Prefix(p) = path {
      if let Err(at) = self.prefix_lens.binary_search_by(|len| p.len().cmp(len)) {
        self.prefix_lens.insert(at, p.len());
      }
    }
    None
  }

  fn find(&self, path: &str) -> Option<usize> {
    if let Some(&i) = self.exact.get(path) {
      return Some(i);
    }
    self
      .prefix_lens
      .iter()
      .filter_map(|&len| path.get(..len))
      .find_map(|prefix| self.prefixes.get(prefix).copied())
  }
}

#[derive(Debug, PartialEq)]
enum Host {
  Exact(String),
  /// `*.x`: subdomains of `x` only.
  Subdomains(String),
  /// `*x`: `x` and its subdomains.
  ApexAndSubdomains(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Path<'a> {
  Exact(&'a str),
  /// The prefix, without the trailing `*`.
  Prefix(&'a str),
}

#[derive(Debug, PartialEq)]
struct Pattern<'a> {
  host: Host,
  path: Path<'a>,
}

fn parse(pattern: &str) -> Result<Pattern<'_>, RouteError> {
  let invalid = |reason: &str| RouteError::Invalid {
    pattern: pattern.to_string(),
    reason: reason.to_string(),
  };
  if pattern.is_empty() {
    return Err(invalid(
      "the pattern is empty; write `HOST/PATH`, e.g. `example.com/*`",
    ));
  }
  if pattern.chars().any(char::is_whitespace) {
    return Err(invalid("it contains whitespace; remove it"));
  }
  if pattern.contains("://") {
    return Err(invalid(
      "routes have no scheme; drop the `http://` or `https://`",
    ));
  }
  let Some(slash) = pattern.find('/') else {
    return Err(invalid(
      "it has no path; add `/*` to match every path on the host, e.g. `example.com/*`",
    ));
  };
  let (host, path) = pattern.split_at(slash);
  Ok(Pattern {
    host: parse_host(host).map_err(invalid)?,
    path: parse_path(path).map_err(invalid)?,
  })
}

fn parse_host(host: &str) -> Result<Host, &'static str> {
  if host.is_empty() {
    return Err("the host is empty; start with a host name, e.g. `example.com/*`");
  }
  let host = host.to_ascii_lowercase();
  if host.starts_with('[') {
    let is_ipv6 = host
      .strip_prefix('[')
      .and_then(|h| h.strip_suffix(']'))
      .is_some_and(|h| {
        !h.is_empty()
          && h
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
      });
    if !is_ipv6 {
      return Err("a bracketed host must be an IPv6 address, e.g. `[::1]/*`");
    }
    return Ok(Host::Exact(host));
  }
  let (name, wildcard) = match host.strip_prefix("*.") {
    Some(rest) => (rest, Some(true)),
    None => match host.strip_prefix('*') {
      Some(rest) => (rest, Some(false)),
      None => (host.as_str(), None),
    },
  };
  if name.is_empty() {
    return Err(
      "a wildcard needs a domain after the `*`, e.g. `*.example.com/*` or `*example.com/*`",
    );
  }
  if name.contains('*') {
    return Err(
      "`*` may only start the host, as `*.example.com` (subdomains) or `*example.com` \
       (the domain and its subdomains)",
    );
  }
  if name.contains(':') {
    return Err("routes match any port; remove the `:port` from the host");
  }
  if !name
    .bytes()
    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
  {
    return Err(
      "the host may only hold letters, digits, `-`, `_` and `.`; write international names \
       in their `xn--` form",
    );
  }
  if name.split('.').any(str::is_empty) {
    return Err("the host has an empty label (a leading, trailing or doubled `.`); remove it");
  }
  let name = name.to_string();
  Ok(match wildcard {
    None => Host::Exact(name),
    Some(true) => Host::Subdomains(name),
    Some(false) => Host::ApexAndSubdomains(name),
  })
}

fn parse_path(path: &str) -> Result<Path<'_>, &'static str> {
  if path.contains(['?', '#']) {
    return Err("routes match paths only; remove the query string or fragment");
  }
  let (path, prefix) = match path.strip_suffix('*') {
    Some(p) => (p, true),
    None => (path, false),
  };
  if path.contains('*') {
    return Err("`*` may only end the path, as a prefix match such as `/api/*`");
  }
  Ok(if prefix {
    Path::Prefix(path)
  } else {
    Path::Exact(path)
  })
}

/// Strips the port and a trailing root `.`, and lowercases, allocating only
/// when the host has uppercase letters.
///
/// Every request comes through here, so it scans bytes: the `str`
/// searches (`rsplit_once`) cost several times as much on a short name.
fn normalize_host(host: &str) -> Cow<'_, str> {
  let bytes = host.as_bytes();
  let end = if bytes.first() == Some(&b'[') {
    // `[::1]:8080` -> `[::1]`.
    bytes
      .iter()
      .position(|&b| b == b']')
      .map_or(bytes.len(), |i| i + 1)
  } else {
    match bytes.iter().rposition(|&b| b == b':') {
      // An unbracketed IPv6 address has several colons and no port.
      Some(colon) if !bytes[..colon].contains(&b':') => colon,
      _ => bytes.len(),
    }
  };
  // The ends are ASCII (`]`, `:`), so `end` is a char boundary.
  let host = &host[..end];
  let host = host.strip_suffix('.').unwrap_or(host);
  if host.bytes().any(|b| b.is_ascii_uppercase()) {
    Cow::Owned(host.to_ascii_lowercase())
  } else {
    Cow::Borrowed(host)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn table(patterns: &[&str]) -> RouteTable<&'static str> {
    let routes: Vec<(String, &'static str)> =
      patterns.iter().map(|p| (p.to_string(), leak(p))).collect();
    RouteTable::new(routes).unwrap()
  }

  /// Targets are the patterns themselves, so assertions read as "this route won".
  fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
  }

  fn error(patterns: &[&str]) -> String {
    let routes = patterns.iter().map(|p| (p.to_string(), ()));
    RouteTable::new(routes).unwrap_err().to_string()
  }

  #[test]
  fn exact_host_matches_only_itself() {
    let t = table(&["alpha.test/*"]);
    assert_eq!(t.lookup("alpha.test", "/"), Some(&"alpha.test/*"));
    assert_eq!(t.lookup("alpha.test", "/x/y"), Some(&"alpha.test/*"));
    assert_eq!(t.lookup("www.alpha.test", "/"), None);
    assert_eq!(t.lookup("xalpha.test", "/"), None);
    assert_eq!(t.lookup("alpha.test.evil", "/"), None);
  }

  #[test]
  fn dot_wildcard_matches_subdomains_at_any_depth_but_not_apex() {
    let t = table(&["*.alpha.test/*"]);
    assert_eq!(t.lookup("a.alpha.test", "/"), Some(&"*.alpha.test/*"));
    assert_eq!(t.lookup("a.b.c.alpha.test", "/x"), Some(&"*.alpha.test/*"));
    assert_eq!(t.lookup("alpha.test", "/"), None);
    assert_eq!(t.lookup("xalpha.test", "/"), None);
    assert_eq!(t.lookup("test", "/"), None);
  }

  #[test]
  fn star_wildcard_matches_apex_and_subdomains() {
    let t = table(&["*alpha.test/*"]);
    assert_eq!(t.lookup("alpha.test", "/"), Some(&"*alpha.test/*"));
    assert_eq!(t.lookup("a.alpha.test", "/"), Some(&"*alpha.test/*"));
    assert_eq!(t.lookup("a.b.alpha.test", "/"), Some(&"*alpha.test/*"));
    // Label boundaries still count: `xalpha.test` is another domain.
    assert_eq!(t.lookup("xalpha.test", "/"), None);
    assert_eq!(t.lookup("test", "/"), None);
  }

  #[test]
  fn exact_host_beats_wildcards() {
    let t = table(&[
      "*alpha.test/*",
      "*.alpha.test/*",
      "www.alpha.test/*",
      "alpha.test/*",
    ]);
    assert_eq!(t.lookup("www.alpha.test", "/"), Some(&"www.alpha.test/*"));
    assert_eq!(t.lookup("alpha.test", "/"), Some(&"alpha.test/*"));
    assert_eq!(t.lookup("api.alpha.test", "/"), Some(&"*.alpha.test/*"));
  }

  #[test]
  fn dot_wildcard_beats_star_wildcard_on_the_same_suffix() {
    let t = table(&["*alpha.test/*", "*.alpha.test/*"]);
    assert_eq!(t.lookup("a.alpha.test", "/"), Some(&"*.alpha.test/*"));
    assert_eq!(t.lookup("alpha.test", "/"), Some(&"*alpha.test/*"));
  }

  #[test]
  fn longer_wildcard_suffix_wins() {
    let t = table(&["*.test/*", "*.alpha.test/*", "*b.alpha.test/*"]);
    assert_eq!(t.lookup("a.b.alpha.test", "/"), Some(&"*b.alpha.test/*"));
    assert_eq!(t.lookup("b.alpha.test", "/"), Some(&"*b.alpha.test/*"));
    assert_eq!(t.lookup("c.alpha.test", "/"), Some(&"*.alpha.test/*"));
    assert_eq!(t.lookup("alpha.test", "/"), Some(&"*.test/*"));
    assert_eq!(t.lookup("beta.test", "/"), Some(&"*.test/*"));
    assert_eq!(t.lookup("test", "/"), None);
  }

  #[test]
  fn port_is_stripped() {
    let t = table(&["alpha.test/*", "*.beta.test/*"]);
    assert_eq!(t.lookup("alpha.test:8080", "/"), Some(&"alpha.test/*"));
    assert_eq!(t.lookup("alpha.test:443", "/x"), Some(&"alpha.test/*"));
    assert_eq!(t.lookup("a.beta.test:80", "/"), Some(&"*.beta.test/*"));
    assert_eq!(t.lookup("alpha.test:", "/"), Some(&"alpha.test/*"));
  }

  #[test]
  fn host_case_is_ignored_in_requests_and_patterns() {
    let t = table(&["Alpha.TEST/*", "*.BETA.test/*"]);
    assert_eq!(t.lookup("alpha.test", "/"), Some(&"Alpha.TEST/*"));
    assert_eq!(t.lookup("ALPHA.Test:8080", "/"), Some(&"Alpha.TEST/*"));
    assert_eq!(t.lookup("WWW.beta.TEST", "/"), Some(&"*.BETA.test/*"));
  }

  #[test]
  fn path_case_is_significant() {
    let t = table(&["alpha.test/Login"]);
    assert_eq!(t.lookup("alpha.test", "/Login"), Some(&"alpha.test/Login"));
    assert_eq!(t.lookup("alpha.test", "/login"), None);
  }

  #[test]
  fn trailing_root_dot_in_request_host_is_ignored() {
    let t = table(&["alpha.test/*", "*.beta.test/*"]);
    assert_eq!(t.lookup("alpha.test.", "/"), Some(&"alpha.test/*"));
    assert_eq!(t.lookup("a.beta.test.:8080", "/"), Some(&"*.beta.test/*"));
  }

  #[test]
  fn ipv6_hosts() {
    let t = table(&["[::1]/*", "[2001:DB8::1]/api/*", "127.0.0.1/*"]);
    assert_eq!(t.lookup("[::1]", "/"), Some(&"[::1]/*"));
    assert_eq!(t.lookup("[::1]:8080", "/x"), Some(&"[::1]/*"));
    assert_eq!(
      t.lookup("[2001:db8::1]:443", "/api/v1"),
      Some(&"[2001:DB8::1]/api/*")
    );
    assert_eq!(
      t.lookup("[2001:DB8::1]", "/api/"),
      Some(&"[2001:DB8::1]/api/*")
    );
    assert_eq!(t.lookup("[::2]:8080", "/"), None);
    assert_eq!(t.lookup("127.0.0.1:8080", "/"), Some(&"127.0.0.1/*"));
    // Unbracketed IPv6 is not a host with a port; it must not lose its last group.
    assert_eq!(t.lookup("::1", "/"), None);
  }

  #[test]
  fn exact_path_matches_only_itself() {
    let t = table(&["alpha.test/login", "alpha.test/"]);
    assert_eq!(t.lookup("alpha.test", "/login"), Some(&"alpha.test/login"));
    assert_eq!(t.lookup("alpha.test", "/"), Some(&"alpha.test/"));
    assert_eq!(t.lookup("alpha.test", ""), Some(&"alpha.test/"));
    assert_eq!(t.lookup("alpha.test", "/login/"), None);
    assert_eq!(t.lookup("alpha.test", "/logins"), None);
    assert_eq!(t.lookup("alpha.test", "/x"), None);
  }

  #[test]
  fn prefix_paths() {
    let t = table(&["a.test/api/*", "b.test/api*", "c.test/*"]);
    assert_eq!(t.lookup("a.test", "/api/"), Some(&"a.test/api/*"));
    assert_eq!(t.lookup("a.test", "/api/x/y"), Some(&"a.test/api/*"));
    assert_eq!(t.lookup("a.test", "/api"), None);
    assert_eq!(t.lookup("a.test", "/apix"), None);
    assert_eq!(t.lookup("b.test", "/api"), Some(&"b.test/api*"));
    assert_eq!(t.lookup("b.test", "/apix"), Some(&"b.test/api*"));
    assert_eq!(t.lookup("b.test", "/api/x"), Some(&"b.test/api*"));
    assert_eq!(t.lookup("b.test", "/ap"), None);
    assert_eq!(t.lookup("c.test", "/"), Some(&"c.test/*"));
    assert_eq!(t.lookup("c.test", "/anything/at/all"), Some(&"c.test/*"));
  }

  #[test]
  fn exact_path_beats_prefix() {
    let t = table(&["alpha.test/*", "alpha.test/api*", "alpha.test/api"]);
    assert_eq!(t.lookup("alpha.test", "/api"), Some(&"alpha.test/api"));
    assert_eq!(t.lookup("alpha.test", "/apix"), Some(&"alpha.test/api*"));
  }

  #[test]
  fn longest_prefix_wins_regardless_of_order() {
    let t = table(&["alpha.test/*", "alpha.test/api/v1/*", "alpha.test/api/*"]);
    assert_eq!(
      t.lookup("alpha.test", "/api/v1/users"),
      Some(&"alpha.test/api/v1/*")
    );
    assert_eq!(
      t.lookup("alpha.test", "/api/v2/users"),
      Some(&"alpha.test/api/*")
    );
    assert_eq!(
      t.lookup("alpha.test", "/static/x.css"),
      Some(&"alpha.test/*")
    );
  }

  #[test]
  fn prefix_on_non_ascii_path_does_not_split_characters() {
    let t = table(&["alpha.test/é*", "alpha.test/a*", "alpha.test/*"]);
    assert_eq!(t.lookup("alpha.test", "/éa"), Some(&"alpha.test/é*"));
    assert_eq!(t.lookup("alpha.test", "/abc"), Some(&"alpha.test/a*"));
    // Length 2 (`/a`) lands inside `è`: skipped, not a panic.
    assert_eq!(t.lookup("alpha.test", "/è"), Some(&"alpha.test/*"));
  }

  #[test]
  fn most_specific_host_beats_longer_path_on_less_specific_host() {
    let t = table(&[
      "*.alpha.test/api/v1/users/*",
      "www.alpha.test/*",
      "*alpha.test/api/v1/*",
    ]);
    assert_eq!(
      t.lookup("www.alpha.test", "/api/v1/users/1"),
      Some(&"www.alpha.test/*")
    );
    assert_eq!(
      t.lookup("api.alpha.test", "/api/v1/users/1"),
      Some(&"*.alpha.test/api/v1/users/*")
    );
    // A host's routes that do not match the path fall through to less specific hosts.
    assert_eq!(
      t.lookup("api.alpha.test", "/api/v1/other"),
      Some(&"*alpha.test/api/v1/*")
    );
  }

  #[test]
  fn falls_through_to_less_specific_host_when_path_misses() {
    let t = table(&["alpha.test/admin/*", "*alpha.test/*", "*.test/x"]);
    assert_eq!(
      t.lookup("alpha.test", "/admin/users"),
      Some(&"alpha.test/admin/*")
    );
    assert_eq!(t.lookup("alpha.test", "/home"), Some(&"*alpha.test/*"));
    assert_eq!(t.lookup("beta.test", "/x"), Some(&"*.test/x"));
  }

  #[test]
  fn no_match_is_none() {
    let t = table(&["alpha.test/api/*", "*.beta.test/x"]);
    assert_eq!(t.lookup("gamma.test", "/api/x"), None);
    assert_eq!(t.lookup("alpha.test", "/other"), None);
    assert_eq!(t.lookup("a.beta.test", "/y"), None);
    assert_eq!(t.lookup("", "/"), None);
    let empty = RouteTable::<()>::new(Vec::new()).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert_eq!(empty.lookup("alpha.test", "/"), None);
  }

  #[test]
  fn len_counts_routes() {
    let t = table(&[
      "alpha.test/*",
      "*.alpha.test/*",
      "*alpha.test/*",
      "alpha.test/x",
    ]);
    assert_eq!(t.len(), 4);
    assert!(!t.is_empty());
  }

  #[test]
  fn targets_are_returned_by_reference() {
    let t = RouteTable::new(vec![
      ("a.test/*".to_string(), 1),
      ("b.test/*".to_string(), 2),
    ])
    .unwrap();
    assert_eq!(t.lookup("a.test", "/"), Some(&1));
    assert_eq!(t.lookup("b.test", "/"), Some(&2));
  }

  #[test]
  fn missing_path_is_invalid_and_suggests_slash_star() {
    let e = error(&["alpha.test"]);
    assert!(e.contains("`alpha.test`"), "{e}");
    assert!(e.contains("add `/*`"), "{e}");
    let e = error(&["*.alpha.test"]);
    assert!(e.contains("`*.alpha.test`") && e.contains("`/*`"), "{e}");
  }

  #[test]
  fn star_inside_host_is_invalid() {
    for p in [
      "alpha.*.test/*",
      "a*lpha.test/*",
      "alpha.test*/*",
      "**.alpha.test/*",
      "*.*.test/*",
    ] {
      let e = error(&[p]);
      assert!(e.contains(&format!("`{p}`")), "{e}");
      assert!(e.contains("`*` may only start the host"), "{e}");
    }
  }

  #[test]
  fn star_inside_path_is_invalid() {
    for p in [
      "alpha.test/*/x",
      "alpha.test/a*b",
      "alpha.test/**",
      "*.alpha.test/a*/b*",
    ] {
      let e = error(&[p]);
      assert!(e.contains(&format!("`{p}`")), "{e}");
      assert!(e.contains("`*` may only end the path"), "{e}");
    }
  }

  #[test]
  fn empty_host_is_invalid() {
    let e = error(&["/*"]);
    assert!(e.contains("`/*`") && e.contains("host is empty"), "{e}");
    let e = error(&["*/*"]);
    assert!(e.contains("`*/*`") && e.contains("needs a domain"), "{e}");
    let e = error(&["*./*"]);
    assert!(e.contains("`*./*`") && e.contains("needs a domain"), "{e}");
    let e = error(&[""]);
    assert!(e.contains("empty"), "{e}");
  }

  #[test]
  fn other_invalid_hosts_explain_the_fix() {
    let cases = [
      ("alpha.test:8080/*", "remove the `:port`"),
      ("https://alpha.test/*", "drop the `http://`"),
      ("alpha..test/*", "empty label"),
      (".alpha.test/*", "empty label"),
      ("alpha.test./*", "empty label"),
      ("*..alpha.test/*", "empty label"),
      ("alpha test/*", "whitespace"),
      ("bücher.test/*", "`xn--` form"),
      ("alpha.test/a?b=1", "query string"),
      ("[::1/*", "IPv6"),
      ("[zz]/*", "IPv6"),
      ("[]/*", "IPv6"),
    ];
    for (p, hint) in cases {
      let e = error(&[p]);
      assert!(e.contains(&format!("`{p}`")), "{e}");
      assert!(e.contains(hint), "{p}: {e}");
    }
  }

  #[test]
  fn duplicates_are_rejected_and_name_both_routes() {
    let e = error(&["alpha.test/*", "beta.test/*", "ALPHA.test/*"]);
    assert!(e.contains("duplicate route `ALPHA.test/*`"), "{e}");
    assert!(e.contains("route `alpha.test/*`"), "{e}");
    for pair in [
      ["alpha.test/x", "alpha.test/x"],
      ["*.alpha.test/api*", "*.ALPHA.test/api*"],
      ["*alpha.test/", "*alpha.test/"],
    ] {
      assert!(error(&pair).starts_with("duplicate route"), "{pair:?}");
    }
  }

  #[test]
  fn similar_but_distinct_patterns_are_not_duplicates() {
    let t = table(&[
      "alpha.test/*",
      "*.alpha.test/*",
      "*alpha.test/*",
      "alpha.test/api",
      "alpha.test/api*",
      "alpha.test/api/*",
      "alpha.test/api/",
    ]);
    assert_eq!(t.len(), 7);
    assert_eq!(t.lookup("alpha.test", "/api/"), Some(&"alpha.test/api/"));
    assert_eq!(t.lookup("alpha.test", "/api/x"), Some(&"alpha.test/api/*"));
  }

  #[test]
  fn many_routes() {
    let routes: Vec<(String, usize)> = (0..5000)
      .flat_map(|i| {
        [
          (format!("h{i}.test/*"), 3 * i),
          (format!("*.w{i}.test/*"), 3 * i + 1),
          (format!("h{i}.test/api/{i}/*"), 3 * i + 2),
        ]
      })
      .collect();
    let t = RouteTable::new(routes).unwrap();
    assert_eq!(t.len(), 15000);
    assert_eq!(t.lookup("h4321.test", "/"), Some(&(3 * 4321)));
    assert_eq!(t.lookup("h4321.test", "/api/4321/x"), Some(&(3 * 4321 + 2)));
    assert_eq!(t.lookup("x.y.w17.test", "/"), Some(&(3 * 17 + 1)));
    assert_eq!(t.lookup("w17.test", "/"), None);
  }

  #[test]
  fn normalize_host_borrows_unless_uppercase() {
    assert!(matches!(
      normalize_host("alpha.test:80"),
      Cow::Borrowed("alpha.test")
    ));
    assert!(matches!(normalize_host("[::1]:80"), Cow::Borrowed("[::1]")));
    assert_eq!(normalize_host("Alpha.Test:80"), "alpha.test");
    assert_eq!(normalize_host("alpha.test.:8080"), "alpha.test");
    assert_eq!(normalize_host("[::1]"), "[::1]");
    assert_eq!(normalize_host("[::1"), "[::1");
    assert_eq!(normalize_host("::1"), "::1");
    assert_eq!(normalize_host("Ünï.test:80"), "Ünï.test");
  }

  #[test]
  fn parse_splits_host_and_path() {
    assert_eq!(
      parse("*.A.test/api*").unwrap(),
      Pattern {
        host: Host::Subdomains("a.test".into()),
        path: Path::Prefix("/api")
      }
    );
    assert_eq!(
      parse("*a.test/").unwrap(),
      Pattern {
        host: Host::ApexAndSubdomains("a.test".into()),
        path: Path::Exact("/")
      }
    );
    assert_eq!(
      parse("a.test/x/y").unwrap(),
      Pattern {
        host: Host::Exact("a.test".into()),
        path: Path::Exact("/x/y")
      }
    );
  }
}
