//! Resolves and loads a worker's modules from its [`Bundle`].

use std::cell::RefCell;

use deno_core::ModuleLoadOptions;
use deno_core::ModuleLoadReferrer;
use deno_core::ModuleLoadResponse;
use deno_core::ModuleLoader;
use deno_core::ModuleSource;
use deno_core::ModuleSourceCode;
use deno_core::ModuleSpecifier;
use deno_core::ModuleType;
use deno_core::RequestedModuleType;
use deno_core::ResolutionKind;
use deno_error::JsErrorBox;
use isola_ext::ModuleValueKind;

use crate::bundle::Bundle;
use crate::specifier::display_specifier;
use crate::specifier::SCHEME_PREFIX;
use isola_proto::names::ModuleKind;

/// `import { WorkerEntrypoint } from "cloudflare:workers"`, as wrangler
/// projects write class-based workers.
const CLOUDFLARE_WORKERS: &str = r#"
export class WorkerEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}
"#;
const CLOUDFLARE_WORKERS_SPECIFIER: &str = "cloudflare:workers";

/// The loader of one isolate. It starts empty so that blank isolates can be
/// made ahead of time; the bundle is set when a worker is loaded into it.
#[derive(Default)]
pub(crate) struct BundleLoader {
  bundle: RefCell<Option<Bundle>>,
}

impl BundleLoader {
  pub(crate) fn set_bundle(&self, bundle: Bundle) {
    *self.bundle.borrow_mut() = Some(bundle);
  }
}

fn referrer_text(referrer: Option<&ModuleLoadReferrer>) -> String {
  match referrer {
    Some(r) => format!(
      " (imported from {}:{}:{})",
      display_specifier(r.specifier.as_str()),
      r.line_number,
      r.column_number
    ),
    None => String::new(),
  }
}

impl ModuleLoader for BundleLoader {
  fn resolve(
    &self,
    specifier: &str,
    referrer: &str,
    _kind: ResolutionKind,
  ) -> Result<ModuleSpecifier, JsErrorBox> {
    if specifier == CLOUDFLARE_WORKERS_SPECIFIER {
      return ModuleSpecifier::parse(specifier).map_err(JsErrorBox::from_err);
    }
    let relative =
      specifier.starts_with("./") || specifier.starts_with("../") || specifier.starts_with('/');
    if !relative && !specifier.starts_with(SCHEME_PREFIX) {
      let from = display_specifier(referrer);
      let hint = if specifier.starts_with("node:") {
        "Node.js built-in modules are not available"
      } else {
        "only relative imports like \"./lib.js\" resolve; bundle packages first, e.g. `esbuild --bundle --format=esm`"
      };
      return Err(JsErrorBox::generic(format!(
        "cannot resolve \"{specifier}\" imported from {from}: {hint}"
      )));
    }
    deno_core::resolve_import(specifier, referrer).map_err(JsErrorBox::from_err)
  }

  fn load(
    &self,
    specifier: &ModuleSpecifier,
    referrer: Option<&ModuleLoadReferrer>,
    options: ModuleLoadOptions,
  ) -> ModuleLoadResponse {
    ModuleLoadResponse::Sync(self.load_sync(specifier, referrer, options))
  }
}

impl BundleLoader {
  fn load_sync(
    &self,
    specifier: &ModuleSpecifier,
    referrer: Option<&ModuleLoadReferrer>,
    options: ModuleLoadOptions,
  ) -> Result<ModuleSource, JsErrorBox> {
    if specifier.as_str() == CLOUDFLARE_WORKERS_SPECIFIER {
      return Ok(ModuleSource::new(
        ModuleType::JavaScript,
        ModuleSourceCode::String(CLOUDFLARE_WORKERS.to_string().into()),
        specifier,
        None,
      ));
    }
    let name = display_specifier(specifier.as_str()).to_string();
    let from = referrer_text(referrer);
    if specifier.scheme() != "file" {
      return Err(JsErrorBox::generic(format!(
        "cannot load {specifier}{from}: only the worker's own modules can be imported"
      )));
    }
    let kind = ModuleKind::from_name(&name).ok_or_else(|| {
      JsErrorBox::generic(format!(
        "cannot import {name}{from}: unknown module type; supported are .js, .mjs, .wasm, .json, .txt, .html and .bin"
      ))
    })?;
    let bundle = self.bundle.borrow();
    let bundle = bundle
      .as_ref()
      .ok_or_else(|| JsErrorBox::generic("no worker is loaded in this isolate"))?;
    let bytes = bundle
      .read(&name)
      .map_err(|e| JsErrorBox::generic(e.to_string()))?
      .ok_or_else(|| JsErrorBox::generic(format!("module not found: {name}{from}")))?;

    let text = |bytes: &[u8]| {
      String::from_utf8(bytes.to_vec())
        .map_err(|e| JsErrorBox::generic(format!("{name} is not valid UTF-8: {e}")))
    };
    let kind = match kind {
      ModuleKind::EsModule => {
        return Ok(ModuleSource::new(
          ModuleType::JavaScript,
          ModuleSourceCode::String(text(&bytes)?.into()),
          specifier,
          None,
        ))
      }
      ModuleKind::Json => {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
          return Err(JsErrorBox::new(
            "SyntaxError",
            format!("invalid JSON in {name}: {e}"),
          ));
        }
        if options.requested_module_type == RequestedModuleType::Json {
          // `import x from "./x.json" with { type: "json" }`: V8's own JSON module.
          return Ok(ModuleSource::new(
            ModuleType::Json,
            ModuleSourceCode::String(text(&bytes)?.into()),
            specifier,
            None,
          ));
        }
        ModuleValueKind::Json
      }
      ModuleKind::Wasm => ModuleValueKind::Wasm,
      ModuleKind::Text => {
        text(&bytes)?;
        ModuleValueKind::Text
      }
      ModuleKind::Data => ModuleValueKind::Data,
    };
    // A plain import gets the facade; the facade's own import (with the
    // value's module type) gets the bytes, which
    // `isola_ext::evaluate_module_value` makes into the value.
    if matches!(&options.requested_module_type,
      RequestedModuleType::Other(t) if t.as_ref() == kind.module_type())
    {
      return Ok(ModuleSource::new(
        ModuleType::Other(kind.module_type().into()),
        ModuleSourceCode::Bytes(bytes.to_vec().into_boxed_slice().into()),
        specifier,
        None,
      ));
    }
    Ok(ModuleSource::new(
      ModuleType::JavaScript,
      ModuleSourceCode::String(kind.facade_source(specifier.as_str()).into()),
      specifier,
      None,
    ))
  }
}
