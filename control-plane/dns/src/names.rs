//! The host names route patterns cover: the server answers for these only.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::RwLock;

use isola_proto::msg::Route;

/// The host names route patterns cover, as of one revision.
#[derive(Debug, Default)]
pub struct Names {
  pub revision: u64,
  /// `host/…` patterns.
  exact: HashSet<String>,
  /// `*.suffix/…`: names below the suffix.
  below: HashSet<String>,
  /// `*suffix/…`: the suffix and names below it.
  at_or_below: HashSet<String>,
}

impl Names {
  /// The names `routes` cover (any path counts).
  pub fn from_routes(revision: u64, routes: &[Route]) -> Self {
    let mut names = Names {
      revision,
      ..Names::default()
    };
    for route in routes {
      let host = route.pattern.split('/').next().unwrap_or_default();
      // A port in a pattern does not change the name.
      let host = host.split(':').next().unwrap_or_default();
      let host = host.trim_end_matches('.').to_ascii_lowercase();
      if let Some(suffix) = host.strip_prefix("*.") {
        names.below.insert(suffix.to_string());
      } else if let Some(suffix) = host.strip_prefix('*') {
        names.at_or_below.insert(suffix.to_string());
      } else if !host.is_empty() {
        names.exact.insert(host);
      }
    }
    names
  }

  /// Whether a route covers `name` (lowercase, no trailing dot).
  pub fn covers(&self, name: &str) -> bool {
    if self.exact.contains(name) || self.at_or_below.contains(name) {
      return true;
    }
    let mut rest = name;
    while let Some((_, suffix)) = rest.split_once('.') {
      if self.below.contains(suffix) || self.at_or_below.contains(suffix) {
        return true;
      }
      rest = suffix;
    }
    false
  }
}

/// The current [`Names`], swapped whole on each revision.
#[derive(Clone, Debug, Default)]
pub struct NamesCache(Arc<RwLock<Arc<Names>>>);

impl NamesCache {
  pub fn get(&self) -> Arc<Names> {
    self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
  }

  pub fn set(&self, names: Names) {
    *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(names);
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn route_patterns_cover_names() {
    let route = |pattern: &str| Route {
      pattern: pattern.into(),
      worker: "w".into(),
    };
    let names = Names::from_routes(
      3,
      &[
        route("shop.apps.example/*"),
        route("*.blog.apps.example/*"),
        route("*api.apps.example/v1/*"),
        route("Admin.Apps.Example:8443/login"),
      ],
    );
    for covered in [
      "shop.apps.example",
      "x.blog.apps.example",
      "a.b.blog.apps.example",
      "api.apps.example",
      "eu.api.apps.example",
      "admin.apps.example",
    ] {
      assert!(names.covers(covered), "{covered}");
    }
    for not in [
      "blog.apps.example",
      "apps.example",
      "x.shop.apps.example",
      "xapi.apps.example",
    ] {
      assert!(!names.covers(not), "{not}");
    }
  }
}
