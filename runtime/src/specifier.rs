//! Module specifiers as people read them: worker modules are
//! `file:///<module name>` inside V8, and plain `<module name>` in every
//! message, log line and stack trace. The Rust side of that rule lives here
//! (the JS side is `cleanStack` in `ext/js/01_worker.js`).

/// Specifiers of worker modules are `file:///<module name>`.
pub(crate) const SCHEME_PREFIX: &str = "file:///";

/// `file:///src/a.js` → `src/a.js`, for messages.
pub(crate) fn display_specifier(specifier: &str) -> &str {
  specifier.strip_prefix(SCHEME_PREFIX).unwrap_or(specifier)
}

/// Drops the `file:///` of worker module specifiers wherever it appears in a
/// message, leaving `module:line:column`. Public so that callers that
/// reword runtime messages (upload checks) need no copy of the rule.
pub fn clean_message(message: &str) -> String {
  message.replace(SCHEME_PREFIX, "")
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn specifiers_read_as_module_names() {
    assert_eq!(display_specifier("file:///src/a.js"), "src/a.js");
    assert_eq!(
      display_specifier("cloudflare:workers"),
      "cloudflare:workers"
    );
    assert_eq!(
      clean_message("at file:///a.js:1:2 (imported from file:///b/c.js:3:4)"),
      "at a.js:1:2 (imported from b/c.js:3:4)"
    );
  }
}
