//! A worker's code: its modules by name and which one is the entry.
//!
//! Module kinds follow wrangler's default module rules: `.js`/`.mjs` are ES
//! modules, `.wasm` imports as a `WebAssembly.Module`, `.txt`/`.html` as a
//! string, `.bin` as an `ArrayBuffer`; `.json` imports as the parsed value.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;

use bytes::Bytes;

use crate::error::Error;
use crate::error::ErrorKind;

/// Specifiers of worker modules are `file:///<module name>`.
pub(crate) const SCHEME_PREFIX: &str = "file:///";

/// What a module file is, by its extension.
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

  /// Checks that `name` can be a module's exact import key (relative,
  /// `/`-separated, no `.`/`..`/empty segments, a known extension) and
  /// returns its kind; the error says how to fix the name.
  pub fn check_name(name: &str) -> Result<Self, &'static str> {
    if name.is_empty() || name.starts_with('/') || name.contains('\\') || name.contains('\0') {
      return Err("use a relative path with '/' separators, like \"src/index.js\"");
    }
    if name
      .split('/')
      .any(|part| part.is_empty() || part == "." || part == "..")
    {
      return Err("path segments may not be empty, \".\" or \"..\"");
    }
    Self::from_name(name)
      .ok_or("unknown module type; supported are .js, .mjs, .wasm, .json, .txt, .html and .bin")
  }
}

#[derive(Clone, Debug)]
enum Source {
  /// Modules held in memory (an uploaded version).
  Memory(BTreeMap<String, Bytes>),
  /// Modules read from a folder on first import (`isola-edge dev`).
  Dir(PathBuf),
}

/// The modules of one worker version.
#[derive(Clone, Debug)]
pub struct Bundle {
  main: String,
  source: Source,
}

impl Bundle {
  /// A bundle from modules in memory, keyed by name (`src/index.js`).
  pub fn from_modules(
    main: impl Into<String>,
    modules: impl IntoIterator<Item = (String, Bytes)>,
  ) -> Result<Self, Error> {
    let main = normalize_name(&main.into())?;
    let mut map = BTreeMap::new();
    for (name, bytes) in modules {
      map.insert(normalize_name(&name)?, bytes);
    }
    if !map.contains_key(&main) {
      return Err(
        ErrorKind::Module(format!(
          "the main module {main} is not among the uploaded modules"
        ))
        .into(),
      );
    }
    Ok(Self {
      main,
      source: Source::Memory(map),
    })
  }

  /// A bundle whose entry is `entry` on disk; imports resolve against its
  /// folder and may not leave it.
  pub fn from_entry_file(entry: &Path) -> Result<Self, Error> {
    let entry = entry
      .canonicalize()
      .map_err(|e| ErrorKind::Io(format!("cannot open worker entry {}: {e}", entry.display())))?;
    let dir = entry.parent().map(Path::to_path_buf).unwrap_or_default();
    let main = entry
      .file_name()
      .and_then(|n| n.to_str())
      .ok_or_else(|| ErrorKind::Io(format!("{} is not a file name", entry.display())))?
      .to_string();
    Ok(Self {
      main,
      source: Source::Dir(dir),
    })
  }

  /// The entry module's name.
  pub fn main_module(&self) -> &str {
    &self.main
  }

  pub(crate) fn main_specifier(&self) -> String {
    format!("{SCHEME_PREFIX}{}", self.main)
  }

  /// The bytes of module `name`, or `None` if the bundle has no such module.
  pub(crate) fn read(&self, name: &str) -> Result<Option<Bytes>, Error> {
    match &self.source {
      Source::Memory(map) => Ok(map.get(name).cloned()),
      Source::Dir(dir) => {
        let path = dir.join(name);
        match std::fs::read(&path) {
          Ok(bytes) => Ok(Some(Bytes::from(bytes))),
          Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
          Err(e) => Err(ErrorKind::Io(format!("cannot read {}: {e}", path.display())).into()),
        }
      }
    }
  }
}

/// Checks a module name: relative, `/`-separated, no `..` escaping the root.
fn normalize_name(name: &str) -> Result<String, Error> {
  let trimmed = name.trim_start_matches("./");
  let bad = trimmed.is_empty()
    || trimmed.starts_with('/')
    || trimmed.contains('\\')
    || trimmed
      .split('/')
      .any(|part| part == ".." || part.is_empty());
  if bad {
    return Err(
      ErrorKind::Module(format!(
        "invalid module name {name:?}: use a relative path like \"src/index.js\" without \"..\""
      ))
      .into(),
    );
  }
  Ok(trimmed.to_string())
}

/// `file:///src/a.js` → `src/a.js`, for messages.
pub(crate) fn display_specifier(specifier: &str) -> &str {
  specifier.strip_prefix(SCHEME_PREFIX).unwrap_or(specifier)
}

/// Drops the `file:///` prefix wherever it appears in a message.
pub(crate) fn strip_file_scheme(message: &str) -> String {
  message.replace(SCHEME_PREFIX, "")
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
  fn names_may_not_escape_the_bundle() {
    assert!(normalize_name("../etc/passwd").is_err());
    assert!(normalize_name("/abs.js").is_err());
    assert!(normalize_name("a//b.js").is_err());
    assert_eq!(normalize_name("./src/a.js").unwrap(), "src/a.js");
  }

  #[test]
  fn main_module_must_be_uploaded() {
    let err =
      Bundle::from_modules("index.js", [("other.js".to_string(), Bytes::new())]).unwrap_err();
    assert!(err.to_string().contains("index.js"), "{err}");
  }
}
