//! Runtime benchmarks: isolate start from the snapshot, first request to a
//! new worker (with and without a ready isolate), warm requests, and warm
//! requests whose trace events are kept and shipped as an edge does.
//!
//! `cargo bench -p isola-runtime` (medians are in criterion's report).
//! The `*_cpu` pairs measure the warm requests in CPU time rather than wall
//! time, which other processes' load on a shared machine barely moves:
//! `thread_cpu` of the request's thread alone (what a request waits for),
//! `process_cpu` of every thread (the shipper's work included).

use bytes::Bytes;
use criterion::criterion_group;
use criterion::criterion_main;
use criterion::BatchSize;
use criterion::Criterion;
use std::sync::Arc;
use std::sync::Mutex;

use isola_runtime::Bundle;
use isola_runtime::Isolate;
use isola_runtime::LogSink;
use isola_runtime::PackedWriter;
use isola_runtime::TraceSink;
use isola_runtime::Worker;
use isola_runtime::WorkerConfig;

const HELLO: &str = r#"export default { fetch() { return new Response("Hello, world!"); } };"#;

fn hello_bundle() -> Bundle {
  Bundle::from_modules(
    "worker.js",
    [(
      "worker.js".to_string(),
      Bytes::from_static(HELLO.as_bytes()),
    )],
  )
  .expect("valid bundle")
}

fn rt() -> tokio::runtime::Runtime {
  tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .unwrap()
}

/// A request as an edge's server hands it over, with a user agent.
fn hello_request() -> http::Request<isola_runtime::RequestBody> {
  let mut request = isola_runtime::empty_request("http://bench.test/");
  request.headers_mut().insert(
    http::header::USER_AGENT,
    http::HeaderValue::from_static("wrk"),
  );
  request
}

/// What an edge does with trace events: each record's row written into a
/// packed batch behind a mutex on the isolate's thread, and a shipper
/// thread, woken every 200 ms or by a full batch, that takes the batch and
/// frames it as the call it sends to the control plane (the network left
/// out).
fn shipping_sink() -> TraceSink {
  const BATCH: usize = 1024;
  let writer = Arc::new(Mutex::new(PackedWriter::default()));
  let taken = writer.clone();
  let full = Arc::new(tokio::sync::Notify::new());
  let woken = full.clone();
  std::thread::spawn(move || {
    let rt = tokio::runtime::Builder::new_current_thread()
      .enable_time()
      .build()
      .unwrap();
    rt.block_on(async move {
      loop {
        tokio::select! {
          () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
          () = woken.notified() => {}
        }
        let batch = taken.lock().unwrap().take();
        let frame = isola_proto::msg::Call::events_frame(|out| batch.write(0, out));
        std::hint::black_box(frame);
      }
    });
  });
  TraceSink::new(move |record| {
    let mut writer = writer.lock().unwrap();
    writer.push(&record);
    if writer.len() == BATCH {
      full.notify_one();
    }
  })
}

async fn request(worker: &mut Worker) {
  let response = worker.fetch(hello_request()).await.expect("hello answers");
  let body = response.into_body().collect_bytes().await.unwrap();
  assert_eq!(&body[..], b"Hello, world!");
}

fn benches(c: &mut Criterion) {
  let rt = rt();
  let config = WorkerConfig::new("bench");

  c.bench_function("isolate_from_snapshot", |b| {
    b.iter(|| rt.block_on(async { Isolate::new(LogSink::discard()).unwrap() }))
  });

  c.bench_function("first_request_cold", |b| {
    b.iter(|| {
      rt.block_on(async {
        let mut worker = Worker::new(hello_bundle(), &config, LogSink::discard())
          .await
          .unwrap();
        request(&mut worker).await;
      })
    })
  });

  c.bench_function("first_request_ready_isolate", |b| {
    b.iter_batched(
      || rt.block_on(async { Isolate::new(LogSink::discard()).unwrap() }),
      |isolate| {
        rt.block_on(async {
          let mut worker = isolate.load(hello_bundle(), &config).await.unwrap();
          request(&mut worker).await;
        })
      },
      BatchSize::PerIteration,
    )
  });

  let mut worker = rt
    .block_on(Worker::new(hello_bundle(), &config, LogSink::discard()))
    .unwrap();
  c.bench_function("warm_request", |b| {
    b.iter(|| rt.block_on(request(&mut worker)))
  });
  let traced = WorkerConfig::new("bench")
    .version("v1")
    .trace(shipping_sink());
  let mut traced = rt
    .block_on(Worker::new(hello_bundle(), &traced, LogSink::discard()))
    .unwrap();
  c.bench_function("warm_request_traced", |b| {
    b.iter(|| rt.block_on(request(&mut traced)))
  });
}

/// CPU time by one of the kernel's CPU clocks (this thread's, or the
/// whole process's).
struct Cpu(libc::clockid_t);

fn cpu_ns(clock: libc::clockid_t) -> u64 {
  let mut ts = libc::timespec {
    tv_sec: 0,
    tv_nsec: 0,
  };
  // SAFETY: `ts` is a valid timespec for the call to fill.
  let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
  assert_eq!(rc, 0, "the CPU clock is readable");
  ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl criterion::measurement::Measurement for Cpu {
  type Intermediate = u64;
  type Value = std::time::Duration;

  fn start(&self) -> u64 {
    cpu_ns(self.0)
  }
  fn end(&self, start: u64) -> std::time::Duration {
    std::time::Duration::from_nanos(cpu_ns(self.0) - start)
  }
  fn add(&self, a: &std::time::Duration, b: &std::time::Duration) -> std::time::Duration {
    *a + *b
  }
  fn zero(&self) -> std::time::Duration {
    std::time::Duration::ZERO
  }
  fn to_f64(&self, value: &std::time::Duration) -> f64 {
    value.as_nanos() as f64
  }
  fn formatter(&self) -> &dyn criterion::measurement::ValueFormatter {
    // Values are nanoseconds, as wall time's: its formatter shows them.
    const WALL: &criterion::measurement::WallTime = &criterion::measurement::WallTime;
    WALL.formatter()
  }
}

fn cpu_benches(c: &mut Criterion<Cpu>, clock: &str) {
  let rt = rt();
  let mut worker = rt
    .block_on(Worker::new(
      hello_bundle(),
      &WorkerConfig::new("bench"),
      LogSink::discard(),
    ))
    .unwrap();
  c.bench_function(&format!("warm_request_{clock}"), |b| {
    b.iter(|| rt.block_on(request(&mut worker)))
  });
  let traced = WorkerConfig::new("bench")
    .version("v1")
    .trace(shipping_sink());
  let mut traced = rt
    .block_on(Worker::new(hello_bundle(), &traced, LogSink::discard()))
    .unwrap();
  c.bench_function(&format!("warm_request_traced_{clock}"), |b| {
    b.iter(|| rt.block_on(request(&mut traced)))
  });
}

criterion_group! {
  name = runtime;
  config = Criterion::default().sample_size(50);
  targets = benches
}
fn thread_cpu(c: &mut Criterion<Cpu>) {
  cpu_benches(c, "thread_cpu");
}
fn process_cpu(c: &mut Criterion<Cpu>) {
  cpu_benches(c, "process_cpu");
}

criterion_group! {
  name = by_thread_cpu;
  config = Criterion::default().with_measurement(Cpu(libc::CLOCK_THREAD_CPUTIME_ID)).sample_size(50);
  targets = thread_cpu
}
criterion_group! {
  name = by_process_cpu;
  config = Criterion::default().with_measurement(Cpu(libc::CLOCK_PROCESS_CPUTIME_ID)).sample_size(50);
  targets = process_cpu
}
criterion_main!(runtime, by_thread_cpu, by_process_cpu);
