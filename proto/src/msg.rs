//! What crosses the control channel. One bidirectional stream per
//! connection carries [`ToEdge`] one way and [`ToControl`] the other.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

/// Bumped on any incompatible change; a peer speaking another version is
/// refused with a message naming both.
pub const PROTOCOL_VERSION: u32 = 3;

/// ALPN of the control channel, so nothing else is mistaken for it.
pub const ALPN: &[u8] = b"isola-control/1";

/// A position in the control plane's change history. Every change that
/// edges must see (deploy, rollback, route, secret) takes the next one.
pub type Revision = u64;

/// Everything an edge must serve, whole, as of one revision. Sent whole
/// rather than as a delta so that catching up after any outage is one
/// message and an edge can never drift from the control plane.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
  pub revision: Revision,
  pub workers: Vec<WorkerDeployment>,
  pub routes: Vec<Route>,
}

impl DesiredState {
  /// Hashes of every version the state serves.
  pub fn version_hashes(&self) -> impl Iterator<Item = &str> {
    self
      .workers
      .iter()
      .flat_map(|w| w.versions.iter().map(|v| v.hash.as_str()))
  }
}

/// The active deployment of one worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerDeployment {
  /// The worker's name on edges (unique across accounts).
  pub name: String,
  /// One version at 100 %, or a split whose percentages add up to 100.
  pub versions: Vec<Split>,
  /// Secret bindings, added to each version's `env`.
  pub secrets: BTreeMap<String, String>,
}

/// A version of a deployment and its share of requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
  /// The version's manifest hash (its id on edges).
  pub hash: String,
  pub percentage: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
  pub pattern: String,
  /// Edge name of the worker.
  pub worker: String,
}

/// A version's canonical manifest JSON and the bytes of its modules, for an
/// edge that does not have it yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionBundle {
  #[serde(with = "serde_bytes")]
  pub manifest: Vec<u8>,
  pub modules: Vec<serde_bytes::ByteBuf>,
}

/// Usage counters: the one shape the runtime meters, the control channel
/// carries and the control plane stores and bills. Times are µs so sums
/// stay exact; presentation (ms) happens at the API's edge.
///
/// Storage operations are counted as Cloudflare bills them, and only those
/// that reached storage (a call refused by a limit or that failed is not).
/// The counters added after the first release are defaulted, so usage
/// spooled or sent by an older edge still reads (as 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
  pub requests: u64,
  /// Invocations that did not end `ok`.
  pub errors: u64,
  pub cpu_us: u64,
  pub wall_us: u64,
  pub ingress_bytes: u64,
  pub egress_bytes: u64,
  pub subrequests: u64,
  /// KV `get`/`getWithMetadata` calls, one per key, whether an edge's
  /// cache answered or the store.
  #[serde(default)]
  pub kv_reads: u64,
  /// KV `put` calls.
  #[serde(default)]
  pub kv_writes: u64,
  /// KV `delete` calls.
  #[serde(default)]
  pub kv_deletes: u64,
  /// KV `list` calls (one per page asked for).
  #[serde(default)]
  pub kv_lists: u64,
  /// Queue operations: each started 64 KB of a message written (sent, or
  /// moved to a dead-letter queue), read (delivered, once per attempt) or
  /// deleted (acknowledged, or dropped after its last retry); see
  /// [`crate::queue::operations`].
  #[serde(default)]
  pub queue_ops: u64,
}

impl std::ops::AddAssign<&Usage> for Usage {
  fn add_assign(&mut self, other: &Usage) {
    self.requests += other.requests;
    self.errors += other.errors;
    self.cpu_us += other.cpu_us;
    self.wall_us += other.wall_us;
    self.ingress_bytes += other.ingress_bytes;
    self.egress_bytes += other.egress_bytes;
    self.subrequests += other.subrequests;
    self.kv_reads += other.kv_reads;
    self.kv_writes += other.kv_writes;
    self.kv_deletes += other.kv_deletes;
    self.kv_lists += other.kv_lists;
    self.queue_ops += other.queue_ops;
  }
}

/// Usage of one worker version on one edge over a window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
  /// Edge name of the worker.
  pub worker: String,
  /// Manifest hash of the version.
  pub version: String,
  /// Window start and end, Unix seconds.
  pub start: u64,
  pub end: u64,
  /// Flattened, so the wire and spool format is the same as when the
  /// counters were fields of the record.
  #[serde(flatten)]
  pub usage: Usage,
}

/// Usage records shipped together. The id is random and made once, when
/// the edge first writes the batch to disk; the control plane stores each id
/// once, so a batch resent after a lost ack is not counted twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBatch {
  pub id: String,
  pub records: Vec<UsageRecord>,
}

/// One run of a worker's scheduled handler, asked of one edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
  /// The run's id, unique in the control plane; the report carries it back.
  pub id: u64,
  /// Edge name of the worker.
  pub worker: String,
  /// The expression, byte for byte (`controller.cron`).
  pub cron: String,
  /// The tick's nominal time, ms since the Unix epoch.
  pub scheduled_time: i64,
  /// CPU limit of the run, ms.
  pub cpu_ms: u64,
}

/// How a scheduled run ended. The names are Cloudflare's (Cron Events,
/// tail), plus the scheduler's own for ticks that never ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunOutcome {
  Ok,
  /// The handler (or a `waitUntil` promise) threw or rejected.
  Exception,
  ExceededCpu,
  ExceededMemory,
  ExceededWallTime,
  /// Another limit (subrequests, body sizes) ended it.
  ExceededResources,
  /// The edge could not run it: the worker is not deployed there, failed
  /// to start, or has no `scheduled` handler.
  Unavailable,
  /// The edge stopped answering before it reported; the run may or may not
  /// have happened there.
  Lost,
  /// Came due while the previous run of the same cron was still going.
  Skipped,
  /// Came due while the scheduler was down and is older than the catch-up
  /// window.
  Missed,
  /// No edge holding the worker was connected.
  NoEdge,
}

impl RunOutcome {
  pub fn as_str(self) -> &'static str {
    match self {
      RunOutcome::Ok => "ok",
      RunOutcome::Exception => "exception",
      RunOutcome::ExceededCpu => "exceededCpu",
      RunOutcome::ExceededMemory => "exceededMemory",
      RunOutcome::ExceededWallTime => "exceededWallTime",
      RunOutcome::ExceededResources => "exceededResources",
      RunOutcome::Unavailable => "unavailable",
      RunOutcome::Lost => "lost",
      RunOutcome::Skipped => "skipped",
      RunOutcome::Missed => "missed",
      RunOutcome::NoEdge => "noEdge",
    }
  }

  pub fn parse(s: &str) -> Option<Self> {
    use RunOutcome::*;
    [
      Ok,
      Exception,
      ExceededCpu,
      ExceededMemory,
      ExceededWallTime,
      ExceededResources,
      Unavailable,
      Lost,
      Skipped,
      Missed,
      NoEdge,
    ]
    .into_iter()
    .find(|o| o.as_str() == s)
  }

  /// Whether the handler ran and failed: the kind of end a retry may mend.
  pub fn failed(self) -> bool {
    !matches!(
      self,
      RunOutcome::Ok | RunOutcome::Skipped | RunOutcome::Missed
    )
  }
}

/// An edge's account of one [`Tick`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickReport {
  pub id: u64,
  pub outcome: RunOutcome,
  /// The handler called `controller.noRetry()`.
  pub no_retry: bool,
  /// Manifest hash of the version that ran, if one did.
  pub version: Option<String>,
  pub cpu_us: u64,
  pub wall_us: u64,
}

/// Control plane → edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToEdge {
  /// A version the edge lacks, sent ahead of the state that serves it. One
  /// version per message keeps every frame below [`crate::codec::MAX_FRAME`]
  /// however many versions an edge must catch up on, and lets both sides
  /// hold one bundle in memory at a time.
  Bundle(VersionBundle),
  /// The new desired state; the bundles it needs were sent before it.
  State {
    state: DesiredState,
  },
  /// The batch is stored; the edge may forget it.
  UsageStored {
    id: String,
  },
  /// Run a worker's scheduled handler now; the edge acknowledges at once
  /// and reports when the run ends.
  Run(Tick),
  /// The report of this run is stored; the edge may forget it.
  RunRecorded {
    id: u64,
  },
  /// A KV key was written or deleted: drop it from the edge's cache.
  KvChanged {
    namespace: String,
    key: String,
  },
  /// Changes were missed (the control plane fell behind): drop every
  /// cached KV read.
  KvFlush,
  /// Run a queue consumer on this batch; the edge acknowledges at once and
  /// reports when the handler is done.
  Deliver(crate::queue::Batch),
  /// The report of this batch is stored; the edge may forget it.
  BatchRecorded {
    id: u64,
  },
  /// The control plane will not talk to this edge; why, for its log.
  Refused {
    reason: String,
  },
  Ping,
}

/// Where an edge is and how it is reached from the internet, from its
/// `[edge]` section: the control plane's geo DNS answers with it and health
/// checks it. Everything is empty when the edge does not say.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeSite {
  /// Operator-chosen region name, like `eu-west`.
  pub region: Option<String>,
  /// Latitude and longitude in degrees.
  pub location: Option<[f64; 2]>,
  pub public_ipv4: Vec<std::net::Ipv4Addr>,
  pub public_ipv6: Vec<std::net::Ipv6Addr>,
  /// Port of the edge's plain HTTP listener, where health checks go.
  pub http_port: Option<u16>,
}

/// Edge → control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToControl {
  /// First message on a connection.
  Hello {
    protocol: u32,
    edge: String,
    /// Last revision the edge applied.
    revision: Revision,
    /// Hashes of the versions in the edge's store, so none is sent twice.
    versions: Vec<String>,
    /// Where the edge is and how the internet reaches it. Defaulted, so a
    /// hello without it (an older edge) still reads.
    #[serde(default)]
    site: EdgeSite,
  },
  /// The edge serves `revision` now. `errors` names workers whose new
  /// version did not start (they keep serving their previous one).
  Applied {
    revision: Revision,
    errors: Vec<String>,
  },
  Usage(UsageBatch),
  /// The edge has the [`Tick`] and is running it.
  RunAccepted {
    id: u64,
  },
  /// A run ended (sent again on the next connection until recorded).
  RunDone(TickReport),
  /// The edge has the batch and is running its consumer (also sent again
  /// on a new connection for batches still going).
  BatchAccepted {
    id: u64,
  },
  /// A batch's consumer finished (sent again until recorded).
  BatchDone(crate::queue::BatchReport),
  Ping,
}

/// A call an edge makes on a stream of its own beside the control stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Call {
  Kv(crate::kv::KvCall),
  /// A producer's messages, with the ids the edge gave them: a send
  /// repeated after a lost answer stores nothing twice.
  Send {
    call: crate::queue::SendCall,
    ids: Vec<String>,
  },
  /// Trace events, best effort (never retried). What edges before
  /// [`Call::Events`] send; still taken.
  Trace(crate::trace::TraceBatch),
  /// Trace events in the compact form, uncompressed: what edges before
  /// [`Call::EventsLz4`] send; still taken.
  Events(crate::trace::PackedBatch),
  /// Trace events as edges send them, best effort: the CBOR of a
  /// [`PackedBatch`](crate::trace::PackedBatch) compressed with LZ4 (block
  /// format, its size first, 4 bytes little-endian; read with
  /// [`PackedBatch::from_lz4`](crate::trace::PackedBatch::from_lz4)). A
  /// batch of requests repeats the same few bytes row after row: a hello
  /// batch of ~1,000 events is ~37 KB of CBOR and ~8 KB compressed, which
  /// is what a control plane taking many edges' events reads off the wire.
  EventsLz4(serde_bytes::ByteBuf),
}

impl Call {
  /// The frame of a [`Call::EventsLz4`] of the batch `batch` writes, as
  /// CBOR of a [`PackedBatch`](crate::trace::PackedBatch): for an edge
  /// that writes its events' CBOR as they end, so a batch is only
  /// compressed and framed here.
  pub fn events_frame(batch: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut cbor = Vec::new();
    batch(&mut cbor);
    let packed = lz4_flex::block::compress_prepend_size(&cbor);
    crate::codec::frame(|out| {
      // The variant as serde writes it: a map of its name to its value,
      // here a byte string.
      out.push(0xa1);
      out.push(0x60 | 9);
      out.extend_from_slice(b"EventsLz4");
      let len = u32::try_from(packed.len()).expect("a batch stays below 4 GiB");
      out.push(0x40 | 26);
      out.extend_from_slice(&len.to_be_bytes());
      out.extend_from_slice(&packed);
    })
  }
}

/// The answer to a [`Call`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CallReply {
  Kv(crate::kv::KvReply),
  Send(crate::queue::SendReply),
  /// The trace batch was taken.
  Traced,
  /// The control plane could not read the call (another protocol version).
  Unsupported,
}
