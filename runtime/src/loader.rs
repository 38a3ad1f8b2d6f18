//! Resolves and loads a worker's modules from its [`Bundle`].

use std::borrow::Cow;
use std::cell::Cell;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use deno_core::FastString;
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
use deno_core::SourceCodeCacheInfo;
use deno_error::JsErrorBox;
use isola_ext::ModuleValueKind;

use crate::bundle::Bundle;
use crate::code_cache::short_hash;
use crate::code_cache::CodeCache;
use crate::code_cache::SourceHash;
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
  code_cache: RefCell<Option<Arc<CodeCache>>>,
  /// Modules handed to V8 with a cache, by specifier: their source hash
  /// (V8 hands back a new cache only if it refused the one it got).
  compiled: RefCell<HashMap<String, SourceHash>>,
  /// Modules compiled without a cache: the worker makes theirs after its
  /// first response ([`BundleLoader::take_deferred`]) once they are wanted.
  deferred: RefCell<Vec<(ModuleSpecifier, SourceHash)>>,
  /// One of them was compiled without a cache before (lately, on this
  /// node): its code is wanted again.
  deferred_wanted: Cell<bool>,
  /// Memory V8 reads in place instead of copying ([`lend`]): ASCII module
  /// sources, as external strings that V8 reads for as long as the
  /// isolate lives (lazy functions compile from them, `toString()` reads
  /// them), and the code caches modules compile with. For a 1 MB bundle
  /// that saves each isolate 1 MB of heap and each load a 1.4 MB copy.
  lent_texts: RefCell<Vec<Arc<str>>>,
  lent_caches: RefCell<Vec<Arc<[u8]>>>,
}

/// `data` as deno_core takes the sources and caches it does not copy:
/// `'static`. It stays in `lent` as long as the loader lives.
fn lend<T: ?Sized>(lent: &RefCell<Vec<Arc<T>>>, data: Arc<T>) -> &'static T {
  let ptr = Arc::as_ptr(&data);
  lent.borrow_mut().push(data);
  // SAFETY: `ptr` is the `Arc`'s heap memory, now held in `lent`, which
  // neither moves nor is freed while the loader lives: nothing is ever
  // taken out of `lent`. The loader outlives the V8 isolate, the only
  // reader: `Isolate` holds it in a field declared after its `JsRuntime`,
  // which disposes the isolate when dropped.
  unsafe { &*ptr }
}

impl BundleLoader {
  /// The worker's modules, and the runtime's code caches if it keeps any.
  pub(crate) fn set_bundle(&self, bundle: Bundle, code_cache: Option<Arc<CodeCache>>) {
    *self.bundle.borrow_mut() = Some(bundle);
    *self.code_cache.borrow_mut() = code_cache;
  }

  /// The code cache V8 should compile ES module `name` with, and a note
  /// that its new cache (if V8 makes one) is wanted. A module without one
  /// compiles without cache info, so that V8 does not make its cache right
  /// away, on the first request's path: it is deferred instead.
  fn code_cache_info(
    &self,
    specifier: &ModuleSpecifier,
    name: &str,
    bundle: &Bundle,
    bytes: &[u8],
  ) -> Option<SourceCodeCacheInfo> {
    let cache = self.code_cache.borrow().clone()?;
    if !cache.wants(bytes.len()) {
      return None;
    }
    let source = bundle.source_hash(name, bytes);
    let Some(data) = cache.lookup(&source) else {
      if cache.compiled_again(&source) {
        self.deferred_wanted.set(true);
      }
      self.deferred.borrow_mut().push((specifier.clone(), source));
      return None;
    };
    self
      .compiled
      .borrow_mut()
      .insert(specifier.to_string(), source);
    let data = lend(&self.lent_caches, data);
    Some(SourceCodeCacheInfo {
      hash: short_hash(&source),
      data: Some(Cow::Borrowed(data)),
    })
  }

  /// Whether modules compiled without a cache wait for theirs.
  pub(crate) fn has_deferred(&self) -> bool {
    !self.deferred.borrow().is_empty()
  }

  /// Whether one of them was compiled without a cache before, lately.
  pub(crate) fn deferred_wanted(&self) -> bool {
    self.deferred_wanted.get()
  }

  /// The modules compiled without a cache, each with its source text, and
  /// the runtime's caches to hand their new caches to.
  pub(crate) fn take_deferred(&self) -> (Option<Arc<CodeCache>>, Vec<DeferredModule>) {
    let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
    let bundle = self.bundle.borrow();
    let modules = deferred
      .into_iter()
      .filter_map(|(specifier, source)| {
        let name = display_specifier(specifier.as_str());
        let bytes = bundle.as_ref()?.read(name).ok()??;
        let text = String::from_utf8(bytes.to_vec()).ok()?;
        Some(DeferredModule {
          specifier,
          source,
          text,
        })
      })
      .collect();
    (self.code_cache.borrow().clone(), modules)
  }
}

/// A module whose code cache is made after the worker's first response.
pub(crate) struct DeferredModule {
  pub(crate) specifier: ModuleSpecifier,
  pub(crate) source: SourceHash,
  pub(crate) text: String,
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

  fn code_cache_ready(
    &self,
    specifier: ModuleSpecifier,
    _hash: u64,
    code_cache: &[u8],
  ) -> Pin<Box<dyn Future<Output = ()>>> {
    let compiled = self.compiled.borrow_mut().remove(specifier.as_str());
    if let (Some(cache), Some(source)) = (self.code_cache.borrow().as_ref(), compiled) {
      // Only a refused cache gets a new one here.
      cache.ready(source, code_cache, true);
    }
    Box::pin(std::future::ready(()))
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

    let not_utf8 = |e: std::str::Utf8Error| {
      JsErrorBox::generic(format!(
        "{name}{from} is not valid UTF-8: {e}; save it as UTF-8"
      ))
    };
    let text = |bytes: &[u8]| {
      std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(not_utf8)
    };
    let kind = match kind {
      ModuleKind::EsModule => {
        let code = bundle.text(&name, &bytes).map_err(not_utf8)?;
        let code_cache = self.code_cache_info(specifier, &name, bundle, &bytes);
        let code = if code.ascii {
          let text = lend(&self.lent_texts, code.text);
          // SAFETY: ASCII, checked when the text was made; V8 reads it as
          // Latin-1, of which ASCII is a part.
          unsafe { FastString::from_ascii_static_unchecked(text) }
        } else {
          code.text.into()
        };
        return Ok(ModuleSource::new(
          ModuleType::JavaScript,
          ModuleSourceCode::String(code),
          specifier,
          code_cache,
        ));
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
