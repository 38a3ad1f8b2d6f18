//! A worker's code: its modules by name and which one is the entry.
//!
//! Module kinds follow wrangler's default module rules: `.js`/`.mjs` are ES
//! modules, `.wasm` imports as a `WebAssembly.Module`, `.txt`/`.html` as a
//! string, `.bin` as an `ArrayBuffer`; `.json` imports as the parsed value.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;

use bytes::Bytes;
use isola_proto::names::check_module_name;
use isola_proto::names::ModuleKind;

use crate::code_cache::source_hash;
use crate::code_cache::SourceHash;
use crate::error::Error;
use crate::error::ErrorKind;
use crate::specifier::SCHEME_PREFIX;

#[derive(Clone, Debug)]
enum Source {
  /// Modules held in memory (an uploaded version), shared by the clones
  /// each isolate of the version gets.
  Memory(Arc<BTreeMap<String, Module>>),
  /// Modules read from a folder on first import (`isola-edge dev`).
  Dir(PathBuf),
}

#[derive(Debug)]
struct Module {
  bytes: Bytes,
  /// The sha256 of `bytes`, the key of its code cache: worked out once per
  /// version, not once per isolate.
  hash: OnceLock<SourceHash>,
  /// An ES module's source as text, when it is UTF-8, and `bytes` a view
  /// of it: the version holds one copy, checked once, that every isolate
  /// of it starts from.
  text: Option<ModuleText>,
}

/// An ES module's source, and whether it is all ASCII (esbuild's default
/// output): V8 then reads it in place instead of copying it into each
/// isolate's heap.
#[derive(Clone, Debug)]
pub(crate) struct ModuleText {
  pub(crate) text: Arc<str>,
  pub(crate) ascii: bool,
}

impl ModuleText {
  fn new(text: &str) -> Self {
    Self {
      ascii: text.is_ascii(),
      text: Arc::from(text),
    }
  }
}

impl Module {
  fn new(name: &str, bytes: Bytes) -> Self {
    let text = (ModuleKind::from_name(name) == Some(ModuleKind::EsModule))
      .then(|| std::str::from_utf8(&bytes).ok().map(ModuleText::new))
      .flatten();
    let bytes = match &text {
      Some(text) => Bytes::from_owner(Text(text.text.clone())),
      None => bytes,
    };
    Self {
      bytes,
      hash: OnceLock::new(),
      text,
    }
  }
}

/// Module text as the owner of its [`Bytes`].
struct Text(Arc<str>);

impl AsRef<[u8]> for Text {
  fn as_ref(&self) -> &[u8] {
    self.0.as_bytes()
  }
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
      let name = normalize_name(&name)?;
      let module = Module::new(&name, bytes);
      map.insert(name, module);
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
      source: Source::Memory(Arc::new(map)),
    })
  }

  /// A bundle whose entry is `entry` on disk; imports resolve against its
  /// folder and may not leave it.
  pub fn from_entry_file(entry: &Path) -> Result<Self, Error> {
    let entry = entry.canonicalize().map_err(|source| ErrorKind::Io {
      what: format!("cannot open worker entry {}", entry.display()),
      source,
    })?;
    let dir = entry.parent().map(Path::to_path_buf).unwrap_or_default();
    let main = entry
      .file_name()
      .and_then(|n| n.to_str())
      .ok_or_else(|| ErrorKind::Io {
        what: format!("cannot open worker entry {}", entry.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "it is not a file name"),
      })?
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
      Source::Memory(map) => Ok(map.get(name).map(|m| m.bytes.clone())),
      Source::Dir(dir) => {
        let path = dir.join(name);
        match std::fs::read(&path) {
          Ok(bytes) => Ok(Some(Bytes::from(bytes))),
          Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
          Err(source) => Err(
            ErrorKind::Io {
              what: format!("cannot read {}", path.display()),
              source,
            }
            .into(),
          ),
        }
      }
    }
  }
}

impl Bundle {
  /// The sha256 of module `name`, whose bytes [`Bundle::read`] returned as
  /// `bytes`.
  pub(crate) fn source_hash(&self, name: &str, bytes: &[u8]) -> SourceHash {
    match &self.source {
      Source::Memory(map) => match map.get(name) {
        Some(m) => *m.hash.get_or_init(|| source_hash(&m.bytes)),
        None => source_hash(bytes),
      },
      // The file may have changed since the last read.
      Source::Dir(_) => source_hash(bytes),
    }
  }

  /// Module `name`'s source as text, whose bytes [`Bundle::read`] returned
  /// as `bytes`; an error if they are not UTF-8.
  pub(crate) fn text(&self, name: &str, bytes: &[u8]) -> Result<ModuleText, std::str::Utf8Error> {
    let text = |bytes: &[u8]| std::str::from_utf8(bytes).map(ModuleText::new);
    match &self.source {
      Source::Memory(map) => match map.get(name).and_then(|m| m.text.as_ref()) {
        Some(text) => Ok(text.clone()),
        None => text(bytes),
      },
      Source::Dir(_) => text(bytes),
    }
  }
}

/// A module name as the bundle keys it: a leading `./` is dropped (as an
/// import would resolve it), then the one module-name rule applies.
fn normalize_name(name: &str) -> Result<String, Error> {
  let trimmed = name.strip_prefix("./").unwrap_or(name);
  check_module_name(trimmed).map_err(|e| ErrorKind::Module(e.to_string()))?;
  Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn names_may_not_escape_the_bundle() {
    assert!(normalize_name("../etc/passwd").is_err());
    assert!(normalize_name("/abs.js").is_err());
    assert!(normalize_name("a//b.js").is_err());
    assert!(normalize_name("a/./b.js").is_err());
    assert!(normalize_name("a\0.js").is_err());
    assert_eq!(normalize_name("./src/a.js").unwrap(), "src/a.js");
  }

  #[test]
  fn a_versions_module_text_is_one_copy_checked_once() {
    let bundle = Bundle::from_modules(
      "a.js",
      [
        ("a.js".to_string(), Bytes::from_static(b"export default 1;")),
        ("b.js".to_string(), Bytes::from_static(b"\xff")),
        (
          "c.js".to_string(),
          Bytes::from("export default 'caf\u{e9}';"),
        ),
      ],
    )
    .unwrap();
    let a = bundle.read("a.js").unwrap().unwrap();
    let first = bundle.text("a.js", &a).unwrap();
    // An isolate's clone of the bundle gets the same copy, and the bytes
    // are that copy too.
    let again = bundle.clone().text("a.js", &a).unwrap();
    assert!(Arc::ptr_eq(&first.text, &again.text));
    assert_eq!(&*first.text, "export default 1;");
    assert!(first.ascii);
    assert_eq!(a.as_ptr(), first.text.as_ptr());
    let b = bundle.read("b.js").unwrap().unwrap();
    assert!(bundle.text("b.js", &b).is_err());
    // UTF-8 but not ASCII: V8 gets a copy (its in-place strings are Latin-1).
    let c = bundle.read("c.js").unwrap().unwrap();
    assert!(!bundle.text("c.js", &c).unwrap().ascii);
  }

  #[test]
  fn main_module_must_be_uploaded() {
    let err =
      Bundle::from_modules("index.js", [("other.js".to_string(), Bytes::new())]).unwrap_err();
    assert!(err.to_string().contains("index.js"), "{err}");
  }
}
