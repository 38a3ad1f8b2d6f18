-- Request shape for the "echo" workload: POST a 1 KiB body.
wrk.method = "POST"
wrk.path = "/echo"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.body = string.rep("0123456789abcdef", 64) -- 1024 bytes
