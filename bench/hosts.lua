-- Appended by measure.py after a workload's wrk.lua when the requests go to
-- several Host names (isola-edge serve with routed workers). measure.py
-- writes `bench_hosts = {...}` just above. Each request is the workload's,
-- with the next Host name in turn; the requests are formatted once, so the
-- per-request cost in wrk is one Lua call.
local reqs, n, i = {}, 0, 0
init = function(args)
  for _, host in ipairs(bench_hosts) do
    local headers = {}
    for k, v in pairs(wrk.headers) do headers[k] = v end
    headers["Host"] = host
    n = n + 1
    reqs[n] = wrk.format(wrk.method, wrk.path, headers, wrk.body)
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
