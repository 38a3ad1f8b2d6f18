// Compiled (never run) in each blank isolate of the stock, so that V8's
// per-isolate parser and bytecode-generator state is warm before a worker's
// own modules are compiled on its first request. Ordinary handler code:
// what it says does not matter, only that it is parsed and compiled.
(function prewarm() {
  const json = (body, status = 200) =>
    new Response(JSON.stringify(body), {
      status,
      headers: { "content-type": "application/json" },
    });

  class Router {
    #routes = new Map();
    add(method, path, handler) {
      this.#routes.set(`${method} ${path}`, handler);
      return this;
    }
    async handle(request, env, ctx) {
      const { pathname, searchParams } = new URL(request.url);
      const handler = this.#routes.get(`${request.method} ${pathname}`);
      if (!handler) return json({ error: "not found", pathname }, 404);
      try {
        return await handler(request, env, ctx, searchParams);
      } catch (err) {
        return json({ error: err?.message ?? String(err) }, 500);
      }
    }
  }

  async function echo(request) {
    const body = await request.text();
    return json({ length: body.length, type: request.headers.get("content-type") });
  }

  return {
    async fetch(request, env, ctx) {
      const router = new Router()
        .add("GET", "/", () => new Response("Hello, world!"))
        .add("POST", "/echo", echo)
        .add("GET", "/items", async (_req, env, _ctx, params) => {
          const items = [];
          for (const [key, value] of Object.entries(env ?? {})) {
            if (params.has(key)) items.push({ key, value, size: `${value}`.length });
          }
          return json(items.sort((a, b) => a.size - b.size).slice(0, 10));
        });
      ctx?.waitUntil?.(Promise.resolve());
      return router.handle(request, env, ctx);
    },
  };
});
