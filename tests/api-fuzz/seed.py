"""Gives the fuzzed control plane something to find: a worker with a
deployment and a route, a KV namespace with a value, a queue."""

import json
import sys
import urllib.request

api, token = sys.argv[1], sys.argv[2]


def call(method, path, body=None, content_type="application/json"):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(api + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


boundary = "isola-fuzz-seed"
parts = [
    ("metadata", b'{"main_module": "worker.js"}'),
    ("worker.js", b"export default { fetch() { return new Response('hi') } };"),
]
body = b"".join(
    b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n\r\n%s\r\n"
    % (boundary.encode(), n.encode(), n.encode(), b)
    for n, b in parts
) + b"--%s--\r\n" % boundary.encode()
version = call("POST", "/v1/workers/hello/versions", body, "multipart/form-data; boundary=" + boundary)
call("POST", "/v1/workers/hello/deployments", {"versions": [{"id": version["id"], "percentage": 100}]})
call("POST", "/v1/routes", {"pattern": "hello.test/*", "worker": "hello"})
ns = call("POST", "/v1/kv/namespaces", {"title": "fuzz"})
call("PUT", "/v1/kv/namespaces/%s/values/greeting" % ns["id"], b"hello", "application/octet-stream")
call("POST", "/v1/queues", {"name": "fuzz"})
print("api-fuzz: seeded worker hello, namespace %s, queue fuzz" % ns["id"])
