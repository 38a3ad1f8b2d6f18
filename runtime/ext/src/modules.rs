//! Values of non-JavaScript modules (Wasm, JSON, text, data), which a worker
//! imports as default exports, the way wrangler's module rules define them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use deno_core::op2;
use deno_core::OpState;
use deno_core::ToJsBuffer;
use deno_error::JsErrorBox;

/// What a non-JS module's default export is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleBlobKind {
  /// A `WebAssembly.Module`.
  Wasm,
  /// The parsed JSON value.
  Json,
  /// The file as a string.
  Text,
  /// The file as an `ArrayBuffer`.
  Data,
}

impl ModuleBlobKind {
  fn as_str(self) -> &'static str {
    match self {
      Self::Wasm => "wasm",
      Self::Json => "json",
      Self::Text => "text",
      Self::Data => "data",
    }
  }
}

/// One non-JS module's bytes.
#[derive(Clone, Debug)]
pub struct ModuleBlob {
  pub kind: ModuleBlobKind,
  pub bytes: Bytes,
}

/// Non-JS modules of the worker loaded in this isolate, by specifier. The
/// module loader fills it; the generated module code reads from it once.
#[derive(Default, Debug)]
pub struct ModuleBlobs(RefCell<HashMap<String, ModuleBlob>>);

impl ModuleBlobs {
  pub fn insert(&self, specifier: String, blob: ModuleBlob) {
    self.0.borrow_mut().insert(specifier, blob);
  }

  /// The JavaScript source standing in for a non-JS module.
  pub fn facade_source(specifier: &str) -> String {
    format!(
      "export default globalThis[Symbol.for(\"isola.moduleValue\")]({});\n",
      serde_json::to_string(specifier).expect("strings serialize")
    )
  }
}

#[op2]
#[serde]
pub fn op_isola_module_data(
  state: &mut OpState,
  #[string] specifier: String,
) -> Result<(&'static str, ToJsBuffer), JsErrorBox> {
  let blobs = state.borrow::<Rc<ModuleBlobs>>();
  let blob = blobs
    .0
    .borrow_mut()
    .remove(&specifier)
    .ok_or_else(|| JsErrorBox::type_error(format!("no module data for {specifier}")))?;
  Ok((blob.kind.as_str(), blob.bytes.to_vec().into()))
}
