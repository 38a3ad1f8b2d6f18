// A first worker: `cargo run -p isola-edge -- dev examples/hello/worker.js`
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname === "/json") {
      return Response.json({ path: url.pathname, ua: request.headers.get("user-agent") });
    }
    console.log(`${request.method} ${url.pathname}`);
    return new Response(`Hello from Isola, ${env.GREETING ?? "world"}!\n`);
  },
};
