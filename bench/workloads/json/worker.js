// Workload "json": read three request headers, reply with a small JSON
// object. wrk sends the headers (see wrk.lua next to this file).
export default {
  fetch(request, env, ctx) {
    const h = request.headers;
    const body = JSON.stringify({
      ok: true,
      userAgent: h.get("user-agent"),
      accept: h.get("accept"),
      requestId: h.get("x-request-id"),
    });
    return new Response(body, {
      headers: { "content-type": "application/json" },
    });
  },
};
