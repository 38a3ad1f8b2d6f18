//! PostgreSQL connections for the blocking store: tokio-postgres clients
//! driven by a small runtime of their own. A call hands its future to that
//! runtime and waits on a plain channel, so it works from any thread, a
//! tokio worker's included (the `postgres` crate's blocking client would
//! start a runtime on the caller's thread, which panics there, even when a
//! client is only dropped).

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;

use tokio_postgres::types::ToSql as PgToSql;
use tokio_postgres::Client;
use tokio_postgres::NoTls;

use super::sql::Error;
use super::sql::Result;
use super::sql::Row;
use super::sql::Value;

/// Connections open at once at most (PostgreSQL's own default limit is
/// 100 for the whole server); a caller past it waits for one.
const MAX_OPEN: usize = 32;
/// Idle connections kept for reuse at most.
const MAX_IDLE: usize = 16;
/// How long one statement may take before the call gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A pool of connections to one database. Cheap to clone.
#[derive(Clone)]
pub struct PgPool(Arc<Inner>);

struct Inner {
  rt: Option<tokio::runtime::Runtime>,
  config: tokio_postgres::Config,
  idle: Mutex<Vec<Arc<Client>>>,
  /// Connections handed out now, and the wait for one to come back.
  open: Mutex<usize>,
  returned: std::sync::Condvar,
}

impl Drop for Inner {
  fn drop(&mut self) {
    // Dropping a runtime waits for its tasks unless told not to, which is
    // refused on a runtime's thread.
    if let Some(rt) = self.rt.take() {
      rt.shutdown_background();
    }
  }
}

impl PgPool {
  pub fn new(config: tokio_postgres::Config) -> Result<Self> {
    let rt = tokio::runtime::Builder::new_multi_thread()
      .worker_threads(2)
      .thread_name("isola-pg")
      .enable_all()
      .build()
      .map_err(|e| Error::Unavailable(format!("cannot start its runtime: {e}")))?;
    Ok(Self(Arc::new(Inner {
      rt: Some(rt),
      config,
      idle: Mutex::new(Vec::new()),
      open: Mutex::new(0),
      returned: std::sync::Condvar::new(),
    })))
  }

  pub fn config(&self) -> &tokio_postgres::Config {
    &self.0.config
  }

  /// Runs `fut` on the pool's runtime and waits for it.
  pub fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    self
      .0
      .rt
      .as_ref()
      .expect("the runtime lives as long as the pool")
      .spawn(async move {
        let _ = tx.send(fut.await);
      });
    rx.recv()
      .expect("the PostgreSQL runtime runs every call to its end")
  }

  /// Spawns `fut` on the pool's runtime.
  pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
    if let Some(rt) = &self.0.rt {
      rt.spawn(fut);
    }
  }

  /// A connection: an idle one, or a new one; waits while [`MAX_OPEN`] are
  /// out.
  pub fn get(&self) -> Result<PgConn> {
    {
      let open = self.0.open.lock().unwrap_or_else(PoisonError::into_inner);
      let (mut open, wait) = self
        .0
        .returned
        .wait_timeout_while(open, CALL_TIMEOUT, |n| *n >= MAX_OPEN)
        .unwrap_or_else(PoisonError::into_inner);
      if wait.timed_out() && *open >= MAX_OPEN {
        return Err(Error::Unavailable(format!(
          "all {MAX_OPEN} connections stayed busy for {CALL_TIMEOUT:?}"
        )));
      }
      *open += 1;
    }
    // Counted from here: given back when the connection drops, or now if
    // none is made.
    let mut slot = Slot {
      pool: self,
      armed: true,
    };
    let idle = {
      let mut idle = self.0.idle.lock().unwrap_or_else(PoisonError::into_inner);
      std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
    };
    let client = match idle {
      Some(c) => c,
      None => {
        let config = self.0.config.clone();
        self.run(async move {
          let (client, connection) = tokio::time::timeout(CALL_TIMEOUT, config.connect(NoTls))
            .await
            .map_err(|_| Error::Unavailable("connecting timed out".into()))??;
          tokio::spawn(async move {
            if let Err(e) = connection.await {
              tracing::debug!(error = %e, "a PostgreSQL connection ended");
            }
          });
          Ok::<_, Error>(Arc::new(client))
        })?
      }
    };
    slot.armed = false;
    Ok(PgConn {
      pool: self.clone(),
      client: Some(client),
      in_transaction: false,
    })
  }

  fn give_back(&self) {
    *self.0.open.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
    self.0.returned.notify_one();
  }
}

/// One of the [`MAX_OPEN`] places, given back unless disarmed (a
/// connection was made and holds it).
struct Slot<'a> {
  pool: &'a PgPool,
  armed: bool,
}

impl Drop for Slot<'_> {
  fn drop(&mut self) {
    if self.armed {
      self.pool.give_back();
    }
  }
}

/// One connection, back in the pool when dropped (unless broken or left
/// in a transaction).
pub struct PgConn {
  pool: PgPool,
  client: Option<Arc<Client>>,
  in_transaction: bool,
}

impl PgConn {
  fn client(&self) -> Arc<Client> {
    self
      .client
      .clone()
      .expect("a connection has its client until dropped")
  }

  /// Every row of `sql` (placeholders `$N`) with `values`.
  pub fn query(&mut self, sql: &str, values: Vec<Value>) -> Result<Vec<Row>> {
    let (client, sql) = (self.client(), sql.to_owned());
    self.pool.run(async move {
      let params: Vec<&(dyn PgToSql + Sync)> =
        values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect();
      let rows = tokio::time::timeout(CALL_TIMEOUT, client.query(sql.as_str(), &params))
        .await
        .map_err(|_| Error::Unavailable("a query timed out".into()))??;
      rows.iter().map(super::sql::pg_row).collect()
    })
  }

  /// Runs `sql`; returns the rows it changed.
  pub fn execute(&mut self, sql: &str, values: Vec<Value>) -> Result<u64> {
    let (client, sql) = (self.client(), sql.to_owned());
    self.pool.run(async move {
      let params: Vec<&(dyn PgToSql + Sync)> =
        values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect();
      Ok(
        tokio::time::timeout(CALL_TIMEOUT, client.execute(sql.as_str(), &params))
          .await
          .map_err(|_| Error::Unavailable("a statement timed out".into()))??,
      )
    })
  }

  /// Runs statements without parameters.
  pub fn batch(&mut self, sql: &str) -> Result<()> {
    let (client, sql) = (self.client(), sql.to_owned());
    self.pool.run(async move {
      tokio::time::timeout(CALL_TIMEOUT, client.batch_execute(sql.as_str()))
        .await
        .map_err(|_| Error::Unavailable("a statement timed out".into()))??;
      Ok(())
    })
  }

  /// Starts a transaction (`BEGIN` plus `mode`); [`Self::finish`] ends it.
  pub fn begin(&mut self, mode: &str) -> Result<()> {
    self.batch(&format!("BEGIN {mode}"))?;
    self.in_transaction = true;
    Ok(())
  }

  /// Commits if `commit`, else rolls back.
  pub fn finish(&mut self, commit: bool) -> Result<()> {
    self.batch(if commit { "COMMIT" } else { "ROLLBACK" })?;
    self.in_transaction = false;
    Ok(())
  }
}

impl Drop for PgConn {
  fn drop(&mut self) {
    let _slot = Slot {
      pool: &self.pool,
      armed: true,
    };
    let Some(client) = self.client.take() else {
      return;
    };
    // A transaction left open (a panic midway) is not handed on: the
    // connection goes, and the server rolls it back.
    if self.in_transaction || client.is_closed() {
      return;
    }
    let mut idle = self
      .pool
      .0
      .idle
      .lock()
      .unwrap_or_else(PoisonError::into_inner);
    if idle.len() < MAX_IDLE {
      idle.push(client);
    }
  }
}
