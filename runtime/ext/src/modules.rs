//! Values of non-JS modules (Wasm, JSON, text, data), which a worker
//! imports as default exports, the way wrangler's module rules define them.
//!
//! A non-JS module `file:///x.wasm` is served twice. A worker's plain import
//! gets a JS facade that re-exports `import v from "file:///x.wasm" with {
//! type: "isola-wasm" }`; that import gets the raw bytes with module type
//! `isola-wasm`, which [`evaluate`] (deno_core's module evaluation callback)
//! turns into a synthetic module's default export. The facade exists because
//! deno_core files synthetic modules under their own type, which a plain
//! import does not ask for. No JS global carries the value on the way, so
//! there is nothing for worker code to name.

use std::borrow::Cow;

use deno_core::v8;
use deno_core::CustomModuleEvaluationKind;
use deno_core::FastString;
use deno_core::ModuleSourceCode;
use deno_error::JsErrorBox;

/// What a non-JS module's default export is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleValueKind {
  /// A `WebAssembly.Module`.
  Wasm,
  /// The parsed JSON value.
  Json,
  /// The file as a string.
  Text,
  /// The file as an `ArrayBuffer`.
  Data,
}

impl ModuleValueKind {
  const ALL: [Self; 4] = [Self::Wasm, Self::Json, Self::Text, Self::Data];

  /// The module type (and `type` import attribute) of the module holding
  /// the value itself.
  pub fn module_type(self) -> &'static str {
    match self {
      Self::Wasm => "isola-wasm",
      Self::Json => "isola-json",
      Self::Text => "isola-text",
      Self::Data => "isola-data",
    }
  }

  /// The kind whose [`ModuleValueKind::module_type`] is `module_type`.
  pub fn from_module_type(module_type: &str) -> Option<Self> {
    Self::ALL
      .into_iter()
      .find(|k| k.module_type() == module_type)
  }

  /// The JavaScript source a plain import of `specifier` gets.
  pub fn facade_source(self, specifier: &str) -> String {
    format!(
      "import value from {} with {{ type: \"{}\" }};\nexport default value;\n",
      serde_json::to_string(specifier).expect("strings serialize"),
      self.module_type()
    )
  }
}

/// Builds the value of a non-JS module from its bytes (the module loader
/// has checked that JSON parses and text is UTF-8).
pub fn evaluate(
  scope: &mut v8::PinScope,
  module_type: Cow<'_, str>,
  name: &FastString,
  code: ModuleSourceCode,
) -> Result<CustomModuleEvaluationKind, JsErrorBox> {
  let kind = ModuleValueKind::from_module_type(&module_type).ok_or_else(|| {
    JsErrorBox::type_error(format!("unknown module type {module_type} for {name}"))
  })?;
  let bytes = code.as_bytes();
  let display = name
    .as_str()
    .strip_prefix("file:///")
    .unwrap_or(name.as_str());
  let value: v8::Local<v8::Value> = match kind {
    ModuleValueKind::Wasm => {
      v8::tc_scope!(let tc, scope);
      let Some(module) = v8::WasmModuleObject::compile(tc, bytes) else {
        let why = tc
          .exception()
          .map(|e| e.to_rust_string_lossy(tc))
          .unwrap_or_else(|| "CompileError: not a WebAssembly module".to_string());
        return Err(JsErrorBox::new("CompileError", format!("{display}: {why}")));
      };
      let value: v8::Local<v8::Value> = module.into();
      return Ok(CustomModuleEvaluationKind::Synthetic(v8::Global::new(
        tc, value,
      )));
    }
    ModuleValueKind::Json => {
      let text = v8::String::new_from_utf8(scope, bytes, v8::NewStringType::Normal)
        .ok_or_else(|| JsErrorBox::range_error(format!("{display} is too large")))?;
      v8::json::parse(scope, text)
        .ok_or_else(|| JsErrorBox::new("SyntaxError", format!("invalid JSON in {display}")))?
    }
    ModuleValueKind::Text => v8::String::new_from_utf8(scope, bytes, v8::NewStringType::Normal)
      .ok_or_else(|| JsErrorBox::range_error(format!("{display} is too large")))?
      .into(),
    ModuleValueKind::Data => {
      let store = v8::ArrayBuffer::new_backing_store_from_vec(bytes.to_vec()).make_shared();
      v8::ArrayBuffer::with_backing_store(scope, &store).into()
    }
  };
  Ok(CustomModuleEvaluationKind::Synthetic(v8::Global::new(
    scope, value,
  )))
}
