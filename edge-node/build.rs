//! Link flags for the `isola-edge` binary.

use std::path::Path;

fn main() {
  // The binary is ~100 MB with ~105,000 relative relocations (V8's tables
  // of pointers): as RELA entries, 2.5 MB that the loader reads and applies
  // at every start (~2 ms of a 12 ms start to the first response). Packed
  // as RELR they take 24 KB and are applied in a fraction of the time; the
  // binary stays position-independent (ASLR). Needs GNU ld ≥ 2.38 or lld
  // (older ones ignore the flag) and glibc ≥ 2.36 at run time (Debian 12).
  let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
  let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
  if os == "linux" && env == "gnu" {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
  }

  // A start runs ~5,000 of the binary's ~93,000 functions, which the
  // linker otherwise scatters over 45 MB of text: ~250 page faults a start
  // (~3.3 µs each here). Listed in `link-order.txt`, lld lays them side by
  // side, the warm request path first (bench/link_order.py writes the
  // list; bench/README.md, *Laying out the binary*). GNU ld has no such
  // flag, so it is passed only where lld links.
  let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
  let order = Path::new(&dir).join("link-order.txt");
  if order.exists() && lld_links() {
    println!(
      "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
      order.display()
    );
    // Names the list has and a build lacks (a changed crate's hash) are
    // skipped, not an error.
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
  }
  println!("cargo:rerun-if-changed=link-order.txt");
  println!("cargo:rerun-if-changed=build.rs");
}

/// Whether rustc links with its own lld: its default on
/// x86_64-unknown-linux-gnu from Rust 1.90, unless a linker or its flavour
/// was chosen (`RUSTC_LINKER` is cargo's `linker` setting; `-C linker=`,
/// `-C link-arg=-fuse-ld=…`, `-C linker-features=…` come in the flags).
fn lld_links() -> bool {
  if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
    || std::env::var_os("RUSTC_LINKER").is_some()
  {
    return false;
  }
  let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
  if flags.contains("linker") || flags.contains("fuse-ld") || flags.contains("link-self-contained")
  {
    return false;
  }
  let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
  let Ok(out) = std::process::Command::new(rustc).arg("-vV").output() else {
    return false;
  };
  let text = String::from_utf8_lossy(&out.stdout);
  let minor = text
    .lines()
    .find_map(|l| l.strip_prefix("release: 1."))
    .and_then(|v| v.split('.').next())
    .and_then(|m| m.parse::<u32>().ok());
  minor.is_some_and(|m| m >= 90)
}
