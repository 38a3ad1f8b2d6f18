# workerd config for this workload: the same worker.js that isola-edge and
# `deno serve` run. run.py overrides the listen address with
# `--socket-addr http=127.0.0.1:PORT`.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [(name = "main", worker = .mainWorker)],
  sockets = [(name = "http", address = "127.0.0.1:8080", http = (), service = "main")],
);

const mainWorker :Workerd.Worker = (
  modules = [(name = "worker", esModule = embed "worker.js")],
  compatibilityDate = "2024-09-01",
);
