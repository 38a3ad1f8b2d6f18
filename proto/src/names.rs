//! The naming rules every part of Isola enforces: the control plane on
//! upload, the edge's store on disk, the runtime when it builds a bundle.
//! One home, so the sides cannot drift apart.

/// A name that breaks a rule; the message says which rule and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

/// Longest worker name on an edge (a DNS label's length).
pub const MAX_EDGE_WORKER_NAME: usize = 63;

/// Whether `name` is 1 to `max` characters of a-z, 0-9, '-' and, if
/// `underscore`, '_'.
fn is_name(name: &str, max: usize, underscore: bool) -> bool {
  (1..=max).contains(&name.len())
    && name
      .bytes()
      .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-') || (underscore && b == b'_'))
}

/// Account names: `[a-z0-9-]{1,32}`, so `account_worker` splits at the first '_'.
pub fn check_account_name(name: &str) -> Result<(), InvalidName> {
  if is_name(name, 32, false) {
    return Ok(());
  }
  Err(InvalidName(format!(
    "invalid account name {name:?}: use 1 to 32 characters of a-z, 0-9 and '-'"
  )))
}

/// Worker names within an account: `[a-z0-9-_]{1,63}`, and short enough that
/// the edge's name for it, [`edge_worker_name`], is a valid edge worker name.
pub fn check_worker_name(account: &str, name: &str) -> Result<(), InvalidName> {
  if !is_name(name, MAX_EDGE_WORKER_NAME, true) {
    return Err(InvalidName(format!(
      "invalid worker name {name:?}: use 1 to 63 characters of a-z, 0-9, '-' and '_'"
    )));
  }
  let max = (MAX_EDGE_WORKER_NAME - 1).saturating_sub(account.len());
  if name.len() > max {
    return Err(InvalidName(format!(
      "worker name {name:?} is too long: in account {account:?} a worker name may have at most \
       {max} characters (edges name it \"{account}_{name}\", which must fit in 63)"
    )));
  }
  Ok(())
}

/// What edges call worker `name` of `account`: unique across accounts.
pub fn edge_worker_name(account: &str, name: &str) -> String {
  format!("{account}_{name}")
}

/// Inverse of [`edge_worker_name`]: account names hold no '_', so the first
/// one splits.
pub fn split_edge_worker_name(s: &str) -> Option<(&str, &str)> {
  let (account, worker) = s.split_once('_')?;
  (!account.is_empty() && !worker.is_empty()).then_some((account, worker))
}

/// Worker names on an edge (they become folder names): `[a-z0-9-_]{1,63}`.
/// Every [`edge_worker_name`] of a checked worker passes.
pub fn check_edge_worker_name(name: &str) -> Result<(), InvalidName> {
  if is_name(name, MAX_EDGE_WORKER_NAME, true) {
    return Ok(());
  }
  Err(InvalidName(format!(
    "invalid worker name {name:?}: use 1 to 63 characters of a-z, 0-9, '-' and '_'"
  )))
}

/// Edge names: `[a-z0-9-]{1,63}`, a DNS label (its certificate names
/// `NAME.edge.isola`).
pub fn check_edge_name(name: &str) -> Result<(), InvalidName> {
  if is_name(name, 63, false) {
    return Ok(());
  }
  Err(InvalidName(format!(
    "invalid edge name {name:?}: use 1 to 63 characters of a-z, 0-9 and '-'"
  )))
}

/// Secret keys become `env` properties: `[A-Za-z_][A-Za-z0-9_]{0,127}`.
pub fn check_secret_key(key: &str) -> Result<(), InvalidName> {
  let mut bytes = key.bytes();
  let ok = key.len() <= 128
    && bytes
      .next()
      .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
    && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
  if ok {
    return Ok(());
  }
  Err(InvalidName(format!(
    "invalid secret name {key:?}: use 1 to 128 letters, digits and '_', not starting with a \
     digit (like API_TOKEN)"
  )))
}

/// Longest module name accepted.
pub const MAX_MODULE_NAME: usize = 1024;

/// What a module file is, by its extension (wrangler's default module
/// rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
  /// An ES module (`.js`, `.mjs`).
  EsModule,
  /// A compiled `WebAssembly.Module` (`.wasm`).
  Wasm,
  /// A parsed JSON value (`.json`).
  Json,
  /// A string (`.txt`, `.html`).
  Text,
  /// An `ArrayBuffer` (`.bin`).
  Data,
}

impl ModuleKind {
  /// The kind a module name implies, or `None` for an unknown extension.
  pub fn from_name(name: &str) -> Option<Self> {
    let ext = name.rsplit_once('.').map(|(_, e)| e)?;
    Some(match ext {
      "js" | "mjs" => Self::EsModule,
      "wasm" => Self::Wasm,
      "json" => Self::Json,
      "txt" | "html" => Self::Text,
      "bin" => Self::Data,
      _ => return None,
    })
  }
}

/// Checks that `name` can be a module's exact import key (relative,
/// `/`-separated, no `.`/`..`/empty segments, no NUL, at most 1024 bytes, a
/// known extension) and returns its kind; the error says how to fix it.
pub fn check_module_name(name: &str) -> Result<ModuleKind, InvalidName> {
  let bad = |reason: &str| InvalidName(format!("invalid module name {name:?}: {reason}"));
  if name.len() > MAX_MODULE_NAME {
    return Err(bad("it is longer than 1024 characters"));
  }
  if name.is_empty() || name.starts_with('/') || name.contains('\\') || name.contains('\0') {
    return Err(bad(
      "use a relative path with '/' separators, like \"src/index.js\"",
    ));
  }
  if name
    .split('/')
    .any(|part| part.is_empty() || part == "." || part == "..")
  {
    return Err(bad("path segments may not be empty, \".\" or \"..\""));
  }
  ModuleKind::from_name(name).ok_or_else(|| {
    bad("unknown module type; supported are .js, .mjs, .wasm, .json, .txt, .html and .bin")
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn module_kinds_follow_wrangler_rules() {
    assert_eq!(ModuleKind::from_name("a/b.mjs"), Some(ModuleKind::EsModule));
    assert_eq!(ModuleKind::from_name("x.wasm"), Some(ModuleKind::Wasm));
    assert_eq!(ModuleKind::from_name("page.html"), Some(ModuleKind::Text));
    assert_eq!(ModuleKind::from_name("blob.bin"), Some(ModuleKind::Data));
    assert_eq!(ModuleKind::from_name("data.json"), Some(ModuleKind::Json));
    assert_eq!(ModuleKind::from_name("style.css"), None);
    assert_eq!(ModuleKind::from_name("Makefile"), None);
  }

  #[test]
  fn module_names_are_exact_relative_keys() {
    assert_eq!(check_module_name("src/a.js"), Ok(ModuleKind::EsModule));
    for bad in [
      "",
      "../etc/passwd.js",
      "/abs.js",
      "a//b.js",
      "a/./b.js",
      "./a.js",
      "a\\b.js",
      "a\0.js",
      "style.css",
    ] {
      assert!(check_module_name(bad).is_err(), "{bad:?}");
    }
    assert!(check_module_name(&format!("{}.js", "a".repeat(1021))).is_ok());
    assert!(check_module_name(&format!("{}.js", "a".repeat(1022))).is_err());
  }

  #[test]
  fn names_follow_their_rules() {
    check_account_name("acme-1").unwrap();
    assert!(check_account_name("Acme").is_err());
    assert!(check_account_name("a_b").is_err());
    assert!(check_account_name(&"a".repeat(33)).is_err());
    check_worker_name("acme", "api_v2-x").unwrap();
    assert!(check_worker_name("acme", "API").is_err());
    assert!(check_worker_name("acme", "").is_err());
    check_worker_name("acme", &"w".repeat(58)).unwrap();
    let err = check_worker_name("acme", &"w".repeat(59)).unwrap_err();
    assert!(err.to_string().contains("at most 58"), "{err}");
    check_edge_name("edge-1").unwrap();
    assert!(check_edge_name("edge_1").is_err());
    check_secret_key("API_TOKEN").unwrap();
    check_secret_key("_x9").unwrap();
    assert!(check_secret_key("9x").is_err());
    assert!(check_secret_key("a-b").is_err());
    assert!(check_secret_key("").is_err());
  }

  #[test]
  fn every_checked_worker_has_a_valid_edge_name() {
    for (account, len) in [("a", 61), ("acme", 58), (&"x".repeat(32) as &str, 30)] {
      let name = "w".repeat(len);
      check_worker_name(account, &name).unwrap();
      check_edge_worker_name(&edge_worker_name(account, &name)).unwrap();
    }
    assert!(check_edge_worker_name(&"w".repeat(64)).is_err());
    assert!(check_edge_worker_name("Bad").is_err());
    assert_eq!(edge_worker_name("acme", "my_api"), "acme_my_api");
    assert_eq!(
      split_edge_worker_name("acme_my_api"),
      Some(("acme", "my_api"))
    );
    assert_eq!(split_edge_worker_name("acme"), None);
    assert_eq!(split_edge_worker_name("_api"), None);
    assert!(check_edge_worker_name("Bad").is_err());
  }
}
