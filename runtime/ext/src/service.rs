//! Service bindings seen from inside an isolate: `env.BINDING.fetch()` and
//! `env.BINDING.method()` go through these ops to a [`ServiceDispatch`]
//! that the runtime installs (it knows the pool; this crate does not).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use deno_core::op2;
use deno_core::ByteString;
use deno_core::CancelFuture as _;
use deno_core::CancelHandle;
use deno_core::OpState;
use deno_core::ResourceId;
use deno_core::ToJsBuffer;
use deno_error::JsErrorBox;
use http_body_util::BodyExt as _;

use crate::body::Meter;
use crate::body::RequestBody;
use crate::body::RequestBodyResource;
use crate::body::ResponseBody;
use crate::meter::BodyMeter;
use crate::outcome::LimitExceeded;

/// A future that stays on the isolate's thread.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// How an RPC call through a binding ended, short of a failure to call.
#[derive(Debug)]
pub enum CallOutcome {
  /// The method's result, V8-serialised.
  Value(Vec<u8>),
  /// The method threw an error with this `name` and `message`.
  Thrown { name: String, message: String },
}

/// Calls other workers for the bindings of one isolate. Errors are the
/// text of the `Error` the caller's JS gets.
pub trait ServiceDispatch {
  /// The binding names, for `env`.
  fn bindings(&self) -> Vec<String>;
  /// `env.BINDING.fetch(request)` from an invocation at chain depth `depth`.
  fn fetch(
    &self,
    binding: &str,
    depth: u32,
    request: http::Request<RequestBody>,
  ) -> LocalFuture<Result<http::Response<ResponseBody>, String>>;
  /// `env.BINDING.method(...args)`; `args` is the V8-serialised array.
  fn call(
    &self,
    binding: &str,
    depth: u32,
    method: String,
    args: Vec<u8>,
  ) -> LocalFuture<Result<CallOutcome, String>>;
}

/// The isolate's [`ServiceDispatch`], kept in its `OpState`.
#[derive(Clone)]
pub struct ServiceTable(pub Rc<dyn ServiceDispatch>);

/// An outbound body is not metered: the callee meters what it reads.
struct Unmetered;

impl Meter for Unmetered {
  fn count(&self, _total: u64, _n: u64) -> bool {
    true
  }
  fn exceeded(&self) -> LimitExceeded {
    LimitExceeded::RequestBody(0)
  }
  fn streaming(&self, _on: bool) {}
}

/// What a binding call needs from its caller's invocation.
struct Caller {
  depth: u32,
  table: ServiceTable,
  /// Fires when the calling invocation ends: the call is dropped with it.
  ended: Rc<CancelHandle>,
}

/// Counts a binding call as a subrequest of invocation `id` and returns
/// its depth and the dispatcher; past the subrequest limit the invocation
/// ends (503) and the call fails.
fn begin_call(state: &mut OpState, id: i32) -> Result<Caller, JsErrorBox> {
  let table = state
    .try_borrow::<ServiceTable>()
    .cloned()
    .ok_or_else(|| JsErrorBox::generic("this isolate has no service bindings"))?;
  let Ok(id) = u32::try_from(id) else {
    return Err(JsErrorBox::generic(
      "a service binding can only be called while a handler runs",
    ));
  };
  let mut invocations = crate::invocations(state);
  if !invocations.count_subrequest(id) {
    let limit = invocations.subrequest_limit;
    invocations.limit(id, LimitExceeded::Subrequests(limit));
    return Err(JsErrorBox::type_error(
      "Too many subrequests: this invocation reached its limit of fetch() and service binding calls",
    ));
  }
  let ended = invocations
    .calls_of(id)
    .ok_or_else(|| JsErrorBox::generic(ENDED))?;
  Ok(Caller {
    depth: invocations.depth(id),
    table,
    ended,
  })
}

const ENDED: &str = "the invocation that made this service binding call has ended";

#[op2]
#[serde]
pub fn op_isola_service_bindings(state: &mut OpState) -> Vec<String> {
  state
    .try_borrow::<ServiceTable>()
    .map(|t| t.0.bindings())
    .unwrap_or_default()
}

/// The head of a binding's response; the body is a resource JS reads.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceResponse {
  status: u16,
  headers: Vec<(ByteString, ByteString)>,
  body_rid: Option<ResourceId>,
}

/// `env.BINDING.fetch()`: `body_rid` is a `ReadableStream` resource of the
/// request body, or -1.
#[op2]
#[serde]
#[allow(clippy::too_many_arguments)]
pub async fn op_isola_service_fetch(
  state: Rc<RefCell<OpState>>,
  #[smi] id: i32,
  #[string] binding: String,
  #[string] method: String,
  #[string] url: String,
  #[serde] headers: Vec<(ByteString, ByteString)>,
  #[smi] body_rid: i32,
) -> Result<ServiceResponse, JsErrorBox> {
  let (caller, body) = {
    let mut state = state.borrow_mut();
    let caller = begin_call(&mut state, id)?;
    let body = match u32::try_from(body_rid) {
      Ok(rid) => Some(
        state
          .resource_table
          .take_any(rid)
          .map_err(JsErrorBox::from_err)?,
      ),
      Err(_) => None,
    };
    (caller, body)
  };
  let body: RequestBody = match body {
    // Pumped like a response body: the callee may run on another thread.
    Some(resource) => ResponseBody::pump(resource, Unmetered).boxed(),
    None => http_body_util::Empty::<Bytes>::new()
      .map_err(|never| match never {})
      .boxed(),
  };
  let mut request = http::Request::builder().method(method.as_str()).uri(url);
  for (name, value) in &headers {
    request = request.header(&name[..], &value[..]);
  }
  let request = request
    .body(body)
    .map_err(|e| JsErrorBox::type_error(format!("invalid request: {e}")))?;
  let response = caller
    .table
    .0
    .fetch(&binding, caller.depth, request)
    .or_cancel(caller.ended)
    .await
    .map_err(|_| JsErrorBox::generic(ENDED))?
    .map_err(JsErrorBox::generic)?;
  let (parts, body) = response.into_parts();
  let headers = parts
    .headers
    .iter()
    .map(|(n, v)| (ByteString::from(n.as_str()), ByteString::from(v.as_bytes())))
    .collect();
  let body_rid = (!http_body::Body::is_end_stream(&body)).then(|| {
    state
      .borrow_mut()
      .resource_table
      .add(RequestBodyResource::new::<BodyMeter>(body.boxed(), None))
  });
  Ok(ServiceResponse {
    status: parts.status.as_u16(),
    headers,
    body_rid,
  })
}

/// What an RPC call answers JS: a value, or the callee's error to rethrow.
#[derive(serde::Serialize)]
pub struct CallReply {
  value: Option<ToJsBuffer>,
  name: Option<String>,
  message: Option<String>,
}

/// `env.BINDING.method(...args)`: `args` is the V8-serialised array.
#[op2]
#[serde]
pub async fn op_isola_service_call(
  state: Rc<RefCell<OpState>>,
  #[smi] id: i32,
  #[string] binding: String,
  #[string] method: String,
  #[buffer(copy)] args: Vec<u8>,
) -> Result<CallReply, JsErrorBox> {
  let caller = begin_call(&mut state.borrow_mut(), id)?;
  let outcome = caller
    .table
    .0
    .call(&binding, caller.depth, method, args)
    .or_cancel(caller.ended)
    .await
    .map_err(|_| JsErrorBox::generic(ENDED))?
    .map_err(JsErrorBox::generic)?;
  Ok(match outcome {
    CallOutcome::Value(bytes) => CallReply {
      value: Some(bytes.into()),
      name: None,
      message: None,
    },
    CallOutcome::Thrown { name, message } => CallReply {
      value: None,
      name: Some(name),
      message: Some(message),
    },
  })
}
