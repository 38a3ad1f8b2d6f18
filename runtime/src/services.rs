//! Service bindings: `env.BINDING` of one worker calls another worker in
//! the same pool, in-process. The node says which worker a binding reaches
//! ([`Services`]); the pool runs the call like any invocation, one level
//! deeper in the chain.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Weak;

use isola_ext::CallOutcome;
use isola_ext::LocalFuture;
use isola_ext::RequestBody;
use isola_ext::ResponseBody;
use isola_ext::ServiceDispatch;

use crate::bundle::Bundle;
use crate::error::Error;
use crate::pool::Runtime;
use crate::pool::Shared;
use crate::worker::Answer;
use crate::worker::Call;
use crate::worker::Fetch;
use crate::worker::WorkerConfig;
use crate::WorkerKey;

/// Invocations one chain of service binding calls may hold, the first
/// (from outside) included; as on Workers.
pub const MAX_CHAIN_DEPTH: u32 = 32;

/// How a node finds the worker a service binding calls. The edge node
/// implements it over its routing state; `isola-edge dev` over its workers.
pub trait Services: Send + Sync + 'static {
  /// The worker `service` that worker `caller` (its WorkerConfig name)
  /// reaches, or None.
  fn resolve(&self, caller: &str, service: &str) -> Option<ServiceTarget>;
}

/// The worker a binding reaches: its pool key, and how to load it if no
/// isolate of it is loaded.
pub struct ServiceTarget {
  pub key: WorkerKey,
  pub source: Box<dyn FnOnce() -> Result<(Bundle, WorkerConfig), Error> + Send>,
}

/// The default: no binding resolves.
pub(crate) struct NoServices;

impl Services for NoServices {
  fn resolve(&self, _caller: &str, _service: &str) -> Option<ServiceTarget> {
    None
  }
}

/// A binding as a worker is configured with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
  pub(crate) service: String,
  pub(crate) entrypoint: Option<String>,
}

/// The pool a worker was loaded by, so that its bindings can call into it;
/// weak, so that isolates do not keep their pool alive.
#[derive(Clone, Default)]
pub(crate) struct PoolLink(pub(crate) Option<Weak<Shared>>);

impl std::fmt::Debug for PoolLink {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("PoolLink")
  }
}

/// One isolate's bindings, as its ops call them.
pub(crate) struct Dispatcher {
  pub(crate) caller: Arc<str>,
  pub(crate) bindings: BTreeMap<String, Binding>,
  pub(crate) pool: PoolLink,
}

impl Dispatcher {
  /// The callee of `binding` at chain depth `depth + 1`, or why not.
  fn target(&self, binding: &str, depth: u32) -> Result<(Runtime, ServiceTarget, Binding), String> {
    let bound = self
      .bindings
      .get(binding)
      .ok_or_else(|| format!("env.{binding} is not a service binding"))?;
    if depth >= MAX_CHAIN_DEPTH {
      return Err(format!(
        "env.{binding}: service binding chain deeper than {MAX_CHAIN_DEPTH} workers; the call was refused"
      ));
    }
    let shared = self
      .pool
      .0
      .as_ref()
      .and_then(Weak::upgrade)
      .ok_or_else(|| {
        format!(
          "env.{binding}: service \"{}\" cannot be reached: this worker does not run in a node's runtime",
          bound.service
        )
      })?;
    let target = shared
      .services()
      .resolve(&self.caller, &bound.service)
      .ok_or_else(|| {
        format!(
          "env.{binding}: service \"{}\" was not found (no such worker is deployed)",
          bound.service
        )
      })?;
    Ok((Runtime::from_shared(shared), target, bound.clone()))
  }
}

impl ServiceDispatch for Dispatcher {
  fn bindings(&self) -> Vec<String> {
    self.bindings.keys().cloned().collect()
  }

  fn fetch(
    &self,
    binding: &str,
    depth: u32,
    request: http::Request<RequestBody>,
  ) -> LocalFuture<Result<http::Response<ResponseBody>, String>> {
    let found = self.target(binding, depth);
    Box::pin(async move {
      let (runtime, target, bound) = found?;
      let call = Call::from(Fetch {
        request,
        entrypoint: bound.entrypoint,
        client: None,
      });
      // The callee's failure is an answer, worded as a client would get it.
      Ok(
        match runtime
          .invoke(&target.key, target.source, call, depth + 1)
          .await
        {
          Ok((Answer::Response(response), _)) => response,
          Ok(_) => crate::text_response(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "Worker answered without a response\n",
          ),
          Err(e) => crate::error_response(&e),
        },
      )
    })
  }

  fn call(
    &self,
    binding: &str,
    depth: u32,
    method: String,
    args: Vec<u8>,
  ) -> LocalFuture<Result<CallOutcome, String>> {
    let found = self.target(binding, depth);
    let binding = binding.to_string();
    Box::pin(async move {
      let (runtime, target, bound) = found?;
      let call = Call::Rpc {
        entrypoint: bound.entrypoint,
        method,
        args,
      };
      match runtime
        .invoke(&target.key, target.source, call, depth + 1)
        .await
      {
        Ok((Answer::Value(v), _)) => Ok(CallOutcome::Value(v)),
        Ok((Answer::Thrown { name, message }, _)) => Ok(CallOutcome::Thrown { name, message }),
        Ok(_) => Err(format!(
          "env.{binding}: the service answered without a value"
        )),
        Err(e) => Err(format!("env.{binding}: {e}")),
      }
    })
  }
}

/// [`Services`] in a `Config`, printable.
#[derive(Clone)]
pub(crate) struct ServicesHandle(pub(crate) Arc<dyn Services>);

impl Default for ServicesHandle {
  fn default() -> Self {
    Self(Arc::new(NoServices))
  }
}

impl std::fmt::Debug for ServicesHandle {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("Services")
  }
}
