//! Workers KV seen from inside an isolate: `env.NS.get/put/delete/list`
//! go through these ops to the node's [`KvService`]. The limits and their
//! wording are `isola_proto::kv`'s, so the binding and the REST API refuse
//! the same things with the same words.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use deno_core::op2;
use deno_core::JsBuffer;
use deno_core::OpState;
use deno_core::ToJsBuffer;
use deno_error::JsErrorBox;
use isola_proto::kv::KvCall;
use isola_proto::kv::KvError;
use isola_proto::kv::KvOp;
use isola_proto::kv::KvReply;
use isola_proto::kv::MAX_LIST_LIMIT;
use isola_proto::kv::MAX_OPS_PER_INVOCATION;

use crate::invocation::StorageOps;

/// Where a worker's KV bindings go: the edge implements it over the control
/// plane (with its cache), `isola-edge dev` over a local store.
pub trait KvService: Send + Sync + 'static {
  /// Runs one call; `cache_ttl` (seconds) is the read's `cacheTtl`, if set.
  fn call(
    &self,
    call: KvCall,
    cache_ttl: Option<u64>,
  ) -> Pin<Box<dyn Future<Output = Result<KvReply, KvError>> + Send + '_>>;
}

/// One isolate's KV bindings (binding name → namespace id), in its
/// `OpState`.
pub struct KvBindings {
  /// The worker's name, which the store checks the namespace against.
  pub worker: Arc<str>,
  pub namespaces: BTreeMap<String, String>,
  pub service: Arc<dyn KvService>,
}

/// KV operations made so far, per invocation id.
#[derive(Default)]
struct KvOps(HashMap<u32, u32>);

/// What a worker's error says when the store failed (details are the
/// node's to log, not the worker's to see).
const FAILED: &str = "KV operation failed";

/// Counts one KV operation of invocation `id` against
/// [`MAX_OPS_PER_INVOCATION`]; returns the invocation's id, and the call's
/// worker, namespace and service.
fn begin(
  state: &mut OpState,
  id: i32,
  binding: &str,
) -> Result<(u32, String, String, Arc<dyn KvService>), JsErrorBox> {
  let (worker, namespace, service) = {
    let bindings = state
      .try_borrow::<KvBindings>()
      .ok_or_else(|| JsErrorBox::generic(format!("env.{binding} is not a KV binding")))?;
    let namespace = bindings
      .namespaces
      .get(binding)
      .ok_or_else(|| JsErrorBox::generic(format!("env.{binding} is not a KV binding")))?;
    (
      bindings.worker.to_string(),
      namespace.clone(),
      bindings.service.clone(),
    )
  };
  let live = u32::try_from(id)
    .ok()
    .filter(|id| crate::invocations(state).usage(*id).is_some());
  let Some(id) = live else {
    return Err(JsErrorBox::generic(
      "KV can only be used while a handler runs (not at the top level of a module)",
    ));
  };
  if !state.has::<KvOps>() {
    state.put(KvOps::default());
  }
  // Forget invocations that are over, so the table stays small.
  if state.borrow::<KvOps>().0.len() > 64 {
    let live: Vec<u32> = crate::invocations(state).ids();
    state
      .borrow_mut::<KvOps>()
      .0
      .retain(|id, _| live.contains(id));
  }
  let ops = state.borrow_mut::<KvOps>().0.entry(id).or_default();
  *ops += 1;
  if *ops > MAX_OPS_PER_INVOCATION {
    return Err(JsErrorBox::generic(format!(
      "KV operation limit: more than {MAX_OPS_PER_INVOCATION} KV operations in one invocation"
    )));
  }
  Ok((id, worker, namespace, service))
}

/// Runs `op` for `binding` of invocation `id`. An operation that the store
/// (or the edge's cache) answered counts for billing; one refused by a
/// check or a limit, or whose call failed, never reached storage and does
/// not.
async fn run(
  state: &Rc<RefCell<OpState>>,
  id: i32,
  binding: &str,
  op: KvOp,
  cache_ttl: Option<u64>,
) -> Result<KvReply, JsErrorBox> {
  let (id, worker, namespace, service) = begin(&mut state.borrow_mut(), id, binding)?;
  let count: fn(&mut StorageOps) = match &op {
    KvOp::Get { .. } => |o| o.kv_reads += 1,
    KvOp::Put { .. } => |o| o.kv_writes += 1,
    KvOp::Delete { .. } => |o| o.kv_deletes += 1,
    KvOp::List { .. } => |o| o.kv_lists += 1,
  };
  let call = KvCall {
    worker,
    namespace,
    op,
  };
  match service.call(call, cache_ttl).await {
    Ok(KvReply::Refused(e)) | Err(e) => Err(JsErrorBox::generic(e.0)),
    Ok(KvReply::Failed) => Err(JsErrorBox::generic(FAILED)),
    Ok(reply) => {
      crate::invocations(&mut state.borrow_mut()).count_ops(id, count);
      Ok(reply)
    }
  }
}

fn check_key(key: &str) -> Result<(), JsErrorBox> {
  isola_proto::kv::check_key(key).map_err(|e| JsErrorBox::type_error(e.0))
}

fn now_secs() -> u64 {
  std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .map_or(0, |d| d.as_secs())
}

/// A whole number of seconds from JS (already checked to be finite and
/// not negative there).
fn secs(n: Option<f64>) -> Option<u64> {
  n.map(|n| n.max(0.0) as u64)
}

#[op2]
#[serde]
pub fn op_isola_kv_bindings(state: &mut OpState) -> Vec<String> {
  state
    .try_borrow::<KvBindings>()
    .map(|b| b.namespaces.keys().cloned().collect())
    .unwrap_or_default()
}

/// The text of the error a value of `len` bytes gets, or None if it fits;
/// lets JS stop reading a stream that is already too large.
#[op2]
#[string]
pub fn op_isola_kv_value_too_large(#[number] len: u64) -> Option<String> {
  let len = usize::try_from(len).unwrap_or(usize::MAX);
  isola_proto::kv::check_write(len, None, None, None, 0)
    .err()
    .map(|e| e.0)
}

/// A value as `get` hands it to JS.
#[derive(serde::Serialize)]
pub struct KvValue {
  value: ToJsBuffer,
  metadata: Option<String>,
}

#[op2]
#[serde]
pub async fn op_isola_kv_get(
  state: Rc<RefCell<OpState>>,
  #[smi] id: i32,
  #[string] binding: String,
  #[string] key: String,
  cache_ttl: f64,
) -> Result<Option<KvValue>, JsErrorBox> {
  check_key(&key)?;
  // Negative: no `cacheTtl` given.
  let cache_ttl = secs(Some(cache_ttl).filter(|t| *t >= 0.0));
  match run(&state, id, &binding, KvOp::Get { key }, cache_ttl).await? {
    KvReply::Value(entry) => Ok(entry.map(|e| KvValue {
      value: e.value.into(),
      metadata: e.metadata,
    })),
    _ => Err(JsErrorBox::generic(FAILED)),
  }
}

/// `put`'s options, metadata already serialized.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutOptions {
  metadata: Option<String>,
  expiration: Option<f64>,
  expiration_ttl: Option<f64>,
}

#[op2]
pub async fn op_isola_kv_put(
  state: Rc<RefCell<OpState>>,
  #[smi] id: i32,
  #[string] binding: String,
  #[string] key: String,
  #[buffer] value: JsBuffer,
  #[serde] options: PutOptions,
) -> Result<(), JsErrorBox> {
  check_key(&key)?;
  let expiration = isola_proto::kv::check_write(
    value.len(),
    options.metadata.as_deref(),
    secs(options.expiration),
    secs(options.expiration_ttl),
    now_secs(),
  )
  .map_err(|e| JsErrorBox::type_error(e.0))?;
  let op = KvOp::Put {
    key,
    value: value.to_vec(),
    metadata: options.metadata,
    expiration,
  };
  match run(&state, id, &binding, op, None).await? {
    KvReply::Done => Ok(()),
    _ => Err(JsErrorBox::generic(FAILED)),
  }
}

#[op2]
pub async fn op_isola_kv_delete(
  state: Rc<RefCell<OpState>>,
  #[smi] id: i32,
  #[string] binding: String,
  #[string] key: String,
) -> Result<(), JsErrorBox> {
  check_key(&key)?;
  match run(&state, id, &binding, KvOp::Delete { key }, None).await? {
    KvReply::Done => Ok(()),
    _ => Err(JsErrorBox::generic(FAILED)),
  }
}

#[derive(serde::Deserialize)]
pub struct ListOptions {
  prefix: Option<String>,
  limit: Option<f64>,
  cursor: Option<String>,
}

/// One key of a listing as JS gets it.
#[derive(serde::Serialize)]
pub struct ListedKey {
  name: String,
  expiration: Option<f64>,
  metadata: Option<String>,
}

#[derive(serde::Serialize)]
pub struct Listed {
  keys: Vec<ListedKey>,
  list_complete: bool,
  cursor: Option<String>,
}

#[op2]
#[serde]
pub async fn op_isola_kv_list(
  state: Rc<RefCell<OpState>>,
  #[smi] id: i32,
  #[string] binding: String,
  #[serde] options: ListOptions,
) -> Result<Listed, JsErrorBox> {
  let limit = match options.limit {
    None => MAX_LIST_LIMIT,
    Some(n) if n >= 1.0 && n <= f64::from(MAX_LIST_LIMIT) => n as u32,
    Some(n) => {
      return Err(JsErrorBox::type_error(format!(
        "KV list limit {n} is out of range: it must be between 1 and {MAX_LIST_LIMIT}"
      )))
    }
  };
  let op = KvOp::List {
    prefix: options.prefix,
    limit,
    cursor: options.cursor,
  };
  match run(&state, id, &binding, op, None).await? {
    KvReply::Keys(list) => Ok(Listed {
      keys: list
        .keys
        .into_iter()
        .map(|k| ListedKey {
          name: k.name,
          expiration: k.expiration.map(|e| e as f64),
          metadata: k.metadata,
        })
        .collect(),
      list_complete: list.list_complete,
      cursor: list.cursor,
    }),
    _ => Err(JsErrorBox::generic(FAILED)),
  }
}

deno_core::extension!(
  isola_kv,
  deps = [deno_web],
  ops = [
    op_isola_kv_bindings,
    op_isola_kv_value_too_large,
    op_isola_kv_get,
    op_isola_kv_put,
    op_isola_kv_delete,
    op_isola_kv_list,
  ],
  esm = [dir "js/kv", "01_kv.js"],
);
