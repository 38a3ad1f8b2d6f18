//! Runtime benchmarks: isolate start from the snapshot, first request to a
//! new worker (with and without a ready isolate), warm requests, and warm
//! requests whose trace events are kept and shipped as an edge does.
//!
//! `cargo bench -p isola-runtime` (medians are in criterion's report).

use bytes::Bytes;
use criterion::criterion_group;
use criterion::criterion_main;
use criterion::BatchSize;
use criterion::Criterion;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use isola_runtime::Bundle;
use isola_runtime::ClientAddr;
use isola_runtime::Isolate;
use isola_runtime::LogSink;
use isola_runtime::TraceEvent;
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

/// A request as an edge's server hands it over: with a user agent and the
/// client's address.
fn hello_request() -> http::Request<isola_runtime::RequestBody> {
  let mut request = isola_runtime::empty_request("http://bench.test/");
  request.headers_mut().insert(
    http::header::USER_AGENT,
    http::HeaderValue::from_static("wrk"),
  );
  request
    .extensions_mut()
    .insert(ClientAddr(std::net::Ipv4Addr::LOCALHOST.into()));
  request
}

/// What an edge does with trace events: a bounded channel filled with
/// `try_send` (a byte count beside it) on the isolate's thread, and a
/// shipper thread, woken every 100 ms or by a full batch, that takes
/// batches of up to 256 and encodes each as the call it sends to the
/// control plane (the network left out).
fn shipping_sink() -> TraceSink {
  let (tx, mut rx) = tokio::sync::mpsc::channel::<(TraceEvent, usize)>(10_000);
  let bytes = Arc::new(AtomicUsize::new(0));
  let shipped = bytes.clone();
  let full = Arc::new(tokio::sync::Notify::new());
  let woken = full.clone();
  // As the edge's shipper: woken every 100 ms or by a full batch, never
  // by one event, and takes what is queued without waiting.
  std::thread::spawn(move || {
    let rt = tokio::runtime::Builder::new_current_thread()
      .enable_time()
      .build()
      .unwrap();
    rt.block_on(async move {
      loop {
        tokio::select! {
          () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
          () = woken.notified() => {}
        }
        loop {
          let mut batch = Vec::with_capacity(256);
          while batch.len() < 256 {
            match rx.try_recv() {
              Ok(e) => batch.push(e),
              Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
              Err(_) => return,
            }
          }
          let more = batch.len() == 256;
          let events = batch
            .into_iter()
            .map(|(mut e, size): (TraceEvent, usize)| {
              shipped.fetch_sub(size, Ordering::Relaxed);
              e.edge = "bench-edge".into();
              e
            })
            .collect();
          let call =
            isola_proto::msg::Call::Trace(isola_proto::trace::TraceBatch { events, dropped: 0 });
          std::hint::black_box(isola_proto::codec::encode(&call));
          if !more {
            break;
          }
        }
      }
    });
  });
  TraceSink::new(move |event| {
    let size = 128 + event.worker.len() + event.version.len();
    if bytes.fetch_add(size, Ordering::Relaxed) + size > 16 << 20
      || tx.try_send((event, size)).is_err()
    {
      bytes.fetch_sub(size, Ordering::Relaxed);
    } else if 10_000 - tx.capacity() == 256 {
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

criterion_group! {
  name = runtime;
  config = Criterion::default().sample_size(50);
  targets = benches
}
criterion_main!(runtime);
