-- Request shape for the "json" workload: the three headers the handler reads.
wrk.method = "GET"
wrk.path = "/json"
wrk.headers["User-Agent"] = "isola-bench/wrk"
wrk.headers["Accept"] = "application/json"
wrk.headers["X-Request-Id"] = "0123456789abcdef"
