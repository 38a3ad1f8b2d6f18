//! Runtime benchmarks: isolate start from the snapshot, first request to a
//! new worker (with and without a ready isolate), warm requests.
//!
//! `cargo bench -p isola-runtime` (medians are in criterion's report).

use bytes::Bytes;
use criterion::criterion_group;
use criterion::criterion_main;
use criterion::BatchSize;
use criterion::Criterion;
use isola_runtime::Bundle;
use isola_runtime::Isolate;
use isola_runtime::LogSink;
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

async fn request(worker: &mut Worker) {
  let response = worker
    .fetch(isola_runtime::empty_request("http://bench.test/"))
    .await
    .expect("hello answers");
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
}

criterion_group! {
  name = runtime;
  config = Criterion::default().sample_size(50);
  targets = benches
}
criterion_main!(runtime);
