//! The V8 strings of a request's parts that repeat from request to request,
//! held per isolate: its method and its header names always, and a header's
//! value or the URL once the same one came twice in a row. Making a header
//! name (an internalized string: hashed, then looked up in V8's string
//! table) cost ~300 instructions a header, a method ~200, a value or a URL
//! ~220; a held handle costs a hash lookup or a comparison and a new local.
//! JS strings are immutable, so a handler cannot tell a held one from a
//! new one.

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

/// Longer values and URLs are made for each request, and not remembered:
/// what an idle isolate holds stays small.
const REPEAT_KEPT: usize = 256;

#[derive(Default)]
pub(super) struct RequestStrings {
  methods: [Option<v8::Global<v8::String>>; METHODS.len()],
  /// The held header names, in the order first seen.
  names: Vec<Name>,
  /// Where each held name is in `names`.
  index: foldhash::HashMap<HeaderName, usize>,
  /// The held names of the last requests by their place among its headers:
  /// a client sends the same headers in the same order request after
  /// request, so a header is first compared with the one last seen in its
  /// place (a comparison, where the hashed lookup cost ~85 instructions).
  order: Vec<usize>,
  url: Repeat,
}

/// A held header name, and the last value that came with it.
struct Name {
  header: HeaderName,
  name: v8::Global<v8::String>,
  value: Repeat,
}

/// The last text seen in one place (a header's value, the URL), and its
/// string once the same text came twice in a row: a value that changes
/// every request (a cookie, a request id) then costs a comparison and a
/// copy of its bytes, not a global handle made and dropped each time.
#[derive(Default)]
struct Repeat {
  last: Vec<u8>,
  held: Option<v8::Global<v8::String>>,
}

impl Repeat {
  /// `text` as a JS string, made by `make` unless held.
  fn get<'s>(
    &mut self,
    scope: &mut v8::PinScope<'s, '_>,
    text: &[u8],
    make: impl FnOnce(&mut v8::PinScope<'s, '_>, &[u8]) -> Option<v8::Local<'s, v8::String>>,
  ) -> Option<v8::Local<'s, v8::String>> {
    if self.last == text {
      if let Some(held) = &self.held {
        return Some(v8::Local::new(scope, held));
      }
      let made = make(scope, text)?;
      self.held = Some(v8::Global::new(scope, made));
      return Some(made);
    }
    self.held = None;
    self.last.clear();
    if text.len() <= REPEAT_KEPT {
      self.last.extend_from_slice(text);
    } else {
      self.last.shrink_to(REPEAT_KEPT);
    }
    make(scope, text)
  }
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

  /// Header `name` (as an internalized JS string) and its `value`, the
  /// `place`-th of its request's headers.
  pub(super) fn header<'s>(
    &mut self,
    scope: &mut v8::PinScope<'s, '_>,
    place: usize,
    name: &HeaderName,
    value: &[u8],
  ) -> Option<(v8::Local<'s, v8::String>, v8::Local<'s, v8::String>)> {
    let held = match self.order.get(place) {
      Some(&k) if self.names[k].header == *name => Some(k),
      _ => self.find(place, name),
    };
    if let Some(k) = held {
      let held = &mut self.names[k];
      let name = v8::Local::new(scope, &held.name);
      return Some((name, held.value.get(scope, value, one_byte)?));
    }
    let made = internalized(scope, name.as_str())?;
    let value = if self.names.len() < NAMES_HELD {
      let mut held = Name {
        header: name.clone(),
        name: v8::Global::new(scope, made),
        value: Repeat::default(),
      };
      let value = held.value.get(scope, value, one_byte);
      self.index.insert(name.clone(), self.names.len());
      self.names.push(held);
      value
    } else {
      one_byte(scope, value)
    };
    Some((made, value?))
  }

  /// Where held `name` is, looked up by its hash; noted as the one seen in
  /// `place` (a new one is, once made, at the next request).
  fn find(&mut self, place: usize, name: &HeaderName) -> Option<usize> {
    let k = self.index.get(name).copied()?;
    if let Some(seen) = self.order.get_mut(place) {
      *seen = k;
    } else if place == self.order.len() && place < NAMES_HELD {
      self.order.push(k);
    }
    Some(k)
  }

  /// The held URL, if there is one and `is` says it is the request's:
  /// the request's URL then need not be written out to be compared.
  pub(super) fn held_url<'s>(
    &self,
    scope: &mut v8::PinScope<'s, '_>,
    is: impl FnOnce(&[u8]) -> bool,
  ) -> Option<v8::Local<'s, v8::String>> {
    let held = self.url.held.as_ref()?;
    is(&self.url.last).then(|| v8::Local::new(scope, held))
  }

  /// The request's URL (UTF-8) as a JS string.
  pub(super) fn url<'s>(
    &mut self,
    scope: &mut v8::PinScope<'s, '_>,
    url: &[u8],
  ) -> Option<v8::Local<'s, v8::String>> {
    self.url.get(scope, url, |scope, text| {
      v8::String::new_from_utf8(scope, text, v8::NewStringType::Normal)
    })
  }
}

/// A header value's bytes as a JS string: Latin-1, as browsers read them.
fn one_byte<'s>(
  scope: &mut v8::PinScope<'s, '_>,
  bytes: &[u8],
) -> Option<v8::Local<'s, v8::String>> {
  v8::String::new_from_one_byte(scope, bytes, v8::NewStringType::Normal)
}

/// `text` (a method or header name: ASCII) as an internalized JS string.
fn internalized<'s>(
  scope: &mut v8::PinScope<'s, '_>,
  text: &str,
) -> Option<v8::Local<'s, v8::String>> {
  v8::String::new_from_one_byte(scope, text.as_bytes(), v8::NewStringType::Internalized)
}
