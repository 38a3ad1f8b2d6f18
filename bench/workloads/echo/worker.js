// Workload "echo": buffer the POSTed body (1 KiB in the benchmark) and send
// it back with the same content-type.
export default {
  async fetch(request, env, ctx) {
    const body = await request.arrayBuffer();
    return new Response(body, {
      headers: {
        "content-type":
          request.headers.get("content-type") ?? "application/octet-stream",
      },
    });
  },
};
