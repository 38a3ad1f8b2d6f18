// Workload "hello": plain-text hello world. Served unchanged by isola-edge,
// `deno serve` and workerd (see bench/README.md); raw hyper mirrors it.
export default {
  fetch(request, env, ctx) {
    return new Response("Hello World!", {
      headers: { "content-type": "text/plain;charset=UTF-8" },
    });
  },
};
