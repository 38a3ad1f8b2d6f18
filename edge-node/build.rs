//! Link flags for the `isola-edge` binary.

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
  println!("cargo:rerun-if-changed=build.rs");
}
