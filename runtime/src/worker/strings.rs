//! The V8 strings of a request's parts that repeat from request to request:
//! its method and its header names, held per isolate. Making a header name
//! (an internalized string: hashed, then looked up in V8's string table)
//! cost ~300 instructions a header and a method ~200; a held handle costs
//! a hash lookup and a new local.

use deno_core::v8;
use http::HeaderName;
use http::Method;

/// The methods held; any other is made for each request.
const METHODS: [Method; 9] = [
  Method::GET,
  Method::POST,
  Method::HEAD,
  Method::PUT,
  Method::DELETE,
  Method::OPTIONS,
  Method::PATCH,
  Method::CONNECT,
  Method::TRACE,
];

/// At most this many header names are held: clients choose the names, and
/// an isolate should not grow with them. The usual ones come first.
const NAMES_HELD: usize = 64;

#[derive(Default)]
pub(super) struct RequestStrings {
  methods: [Option<v8::Global<v8::String>>; METHODS.len()],
  names: foldhash::HashMap<HeaderName, v8::Global<v8::String>>,
}

impl RequestStrings {
  /// `method` as a JS string.
  pub(super) fn method<'s>(
    &mut self,
    scope: &mut v8::PinScope<'s, '_>,
    method: &Method,
  ) -> Option<v8::Local<'s, v8::String>> {
    let Some(i) = METHODS.iter().position(|m| m == method) else {
      return v8::String::new(scope, method.as_str());
    };
    if let Some(held) = &self.methods[i] {
      return Some(v8::Local::new(scope, held));
    }
    let made = internalized(scope, method.as_str())?;
    self.methods[i] = Some(v8::Global::new(scope, made));
    Some(made)
  }

  /// Header `name` as an internalized JS string.
  pub(super) fn header_name<'s>(
    &mut self,
    scope: &mut v8::PinScope<'s, '_>,
    name: &HeaderName,
  ) -> Option<v8::Local<'s, v8::String>> {
    if let Some(held) = self.names.get(name) {
      return Some(v8::Local::new(scope, held));
    }
    let made = internalized(scope, name.as_str())?;
    if self.names.len() < NAMES_HELD {
      self
        .names
        .insert(name.clone(), v8::Global::new(scope, made));
    }
    Some(made)
  }
}

/// `text` (a method or header name: ASCII) as an internalized JS string.
fn internalized<'s>(
  scope: &mut v8::PinScope<'s, '_>,
  text: &str,
) -> Option<v8::Local<'s, v8::String>> {
  v8::String::new_from_one_byte(scope, text.as_bytes(), v8::NewStringType::Internalized)
}
