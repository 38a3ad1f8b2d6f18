-- Request shape for the "hello" workload: a bare GET.
wrk.method = "GET"
wrk.path = "/"
