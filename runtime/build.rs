//! Makes the startup snapshot: every worker isolate starts from a heap where
//! the Workers global scope is already built, so no bootstrap JS runs again.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
  let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
  let extensions = isola_ext::extensions();

  // `core.loadExtScript` compiles a script as the body of a function.
  // deno_core wraps the scripts bootstrap loads itself (into external strings
  // the snapshot keeps outside the V8 heap); those it loads later it wraps
  // when loaded, into a heap string in each isolate (31 KB for crypto,
  // URLPattern and compression together).
  // Wrapped here, they stay static text every isolate shares.
  let mut lazy = Vec::new();
  for ext in &extensions {
    for source in ext.lazy_loaded_js_files.iter() {
      let code = source.load().expect("extension source is in the binary");
      lazy.push((
        source.specifier,
        deno_core::wrap_lazy_ext_script(code.as_str()),
      ));
    }
  }

  let output = deno_core::snapshot::create_snapshot(
    deno_core::snapshot::CreateSnapshotOptions {
      cargo_manifest_dir: env!("CARGO_MANIFEST_DIR"),
      startup_snapshot: None,
      skip_op_registration: false,
      extensions,
      extension_transpiler: None,
      // The request path's functions compiled into the snapshot: V8 keeps
      // their bytecode (`FunctionCodeHandling::Keep`), so no isolate
      // compiles them again on its first request.
      with_runtime_cb: Some(Box::new(|runtime| {
        runtime
          .execute_script("isola:warm", "globalThis.__isolaInternals.warm()")
          .expect("the request path runs in the snapshot");
      })),
    },
    None,
  )
  .expect("the worker snapshot builds");
  for path in &output.files_loaded_during_snapshot {
    println!("cargo:rerun-if-changed={}", path.display());
  }
  std::fs::write(out_dir.join("ISOLA_SNAPSHOT.bin"), &output.output).expect("write snapshot");

  // Lazily loaded scripts that bootstrap did not consume are not in the
  // snapshot; isolates find their (wrapped) sources in this table, by binary
  // search.
  lazy.sort_by(|a, b| a.0.cmp(b.0));
  let mut table = String::from("pub static RESIDUAL_LAZY_JS: &[(&str, &str)] = &[\n");
  for (i, (specifier, code)) in lazy.iter().enumerate() {
    if output
      .consumed_lazy_specifiers
      .iter()
      .any(|c| c == specifier)
    {
      continue;
    }
    let file = out_dir.join(format!("residual_{i}.js"));
    std::fs::write(&file, code).expect("write residual source");
    writeln!(
      table,
      "  ({specifier:?}, include_str!({:?})),",
      file.display().to_string()
    )
    .unwrap();
  }
  table.push_str("];\n");
  std::fs::write(out_dir.join("residual_lazy.rs"), table).expect("write residual table");
  println!("cargo:rerun-if-changed=build.rs");
}
