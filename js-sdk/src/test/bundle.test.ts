import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { bundle, BundleError, globToRegExp } from "../bundle.js";
import { cleanup, tempDir, write } from "./helpers.js";

test("bundles npm-style packages; .txt/.json/.wasm/.bin stay modules beside the bundle", async () => {
  const dir = tempDir();
  try {
    write(dir, "src/index.ts", `import text from "./data/hello.txt";
import conf from "../conf.json";
import page from "./page.html";
import blob from "./blob.bin";
import { shout } from "shouty";
import { which } from "cond-pkg";
import cjs from "cjs-json";
export default {
  async fetch(): Promise<Response> {
    return new Response(shout(text) + JSON.stringify(conf) + page + blob.byteLength + which + cjs);
  },
};
`);
    write(dir, "src/data/hello.txt", "hello text");
    write(dir, "conf.json", `{"answer": 42}`);
    write(dir, "src/page.html", "<p>hi</p>");
    write(dir, "src/blob.bin", "\u0001\u0002");
    write(dir, "node_modules/shouty/package.json", `{"name":"shouty","main":"./lib/main.js","module":"./lib/esm.js"}`);
    write(dir, "node_modules/shouty/lib/main.js", `exports.shout = (s) => "CJS";`);
    write(dir, "node_modules/shouty/lib/esm.js", `export const shout = (s) => s.toUpperCase() + "!";`);
    write(
      dir,
      "node_modules/cond-pkg/package.json",
      `{"name":"cond-pkg","exports":{".":{"workerd":"./workerd.js","node":"./node.js","default":"./default.js"}}}`,
    );
    write(dir, "node_modules/cond-pkg/workerd.js", `export const which = "workerd";`);
    write(dir, "node_modules/cond-pkg/node.js", `export const which = "node";`);
    write(dir, "node_modules/cond-pkg/default.js", `export const which = "default";`);

    write(dir, "node_modules/cjs-json/package.json", `{"name":"cjs-json","main":"index.js"}`);
    write(dir, "node_modules/cjs-json/index.js", `module.exports = require("./table.json").k;`);
    write(dir, "node_modules/cjs-json/table.json", `{"k": "required-json"}`);
    const out = join(dir, "out");
    const r = await bundle({ entry: "src/index.ts", root: dir, outdir: out });
    const names = r.modules.map((m) => m.name).sort();
    assert.deepEqual(names, ["conf.json", "index.js", "src/blob.bin", "src/data/hello.txt", "src/page.html"]);
    const js = readFileSync(join(out, "index.js"), "utf8");
    assert.match(js, /from "\.\/src\/data\/hello\.txt"/);
    assert.match(js, /from "\.\/conf\.json"/);
    assert.match(js, /toUpperCase/, "the package's module field is bundled");
    assert.match(js, /"workerd"/, "the workerd condition wins");
    assert.doesNotMatch(js, /"node"/);
    assert.match(js, /"required-json"/, "a JSON file a CommonJS package requires is inlined");
    assert.equal(readFileSync(join(out, "src/data/hello.txt"), "utf8"), "hello text");
    assert.equal(readFileSync(join(out, "conf.json"), "utf8"), `{"answer": 42}`);
    const types = Object.fromEntries(r.modules.map((m) => [m.name, m.contentType]));
    assert.equal(types["index.js"], "application/javascript+module");
    assert.equal(types["conf.json"], "application/json");
    assert.equal(types["src/data/hello.txt"], "text/plain");
    assert.equal(types["src/blob.bin"], "application/octet-stream");
    assert.ok(r.inputs.some((p) => p.endsWith(join("src", "index.ts"))));
  } finally {
    cleanup(dir);
  }
});

test("a syntax error is a BundleError with file:line:column; the old output stays", async () => {
  const dir = tempDir();
  try {
    write(dir, "src/index.js", `export default { fetch() { return new Response("ok"); } };\n`);
    const out = join(dir, "out");
    await bundle({ entry: "src/index.js", root: dir, outdir: out });
    write(dir, "src/index.js", `export default {\n  fetch() { return new Response("ok" }\n};\n`);
    await assert.rejects(
      bundle({ entry: "src/index.js", root: dir, outdir: out }),
      (e: unknown) => e instanceof BundleError && /src\/index\.js:2:\d+: error: /.test(e.message),
    );
    assert.ok(existsSync(join(out, "index.js")));
  } finally {
    cleanup(dir);
  }
});

test("source maps: inline and linked", async () => {
  const dir = tempDir();
  try {
    write(dir, "src/index.js", `export default { fetch() { return new Response("ok"); } };\n`);
    const inline = await bundle({ entry: "src/index.js", root: dir, outdir: join(dir, "a"), sourcemap: "inline" });
    assert.match(readFileSync(join(inline.outdir, "index.js"), "utf8"), /sourceMappingURL=data:application\/json/);
    const linked = await bundle({ entry: "src/index.js", root: dir, outdir: join(dir, "b"), sourcemap: "linked" });
    assert.match(readFileSync(join(linked.outdir, "index.js"), "utf8"), /sourceMappingURL=index\.js\.map/);
    assert.ok(existsSync(join(linked.outdir, "index.js.map")));
    assert.deepEqual(linked.modules.map((m) => m.name), ["index.js"], "the map is not a module");
  } finally {
    cleanup(dir);
  }
});

test("user rules come before the defaults", async () => {
  const dir = tempDir();
  try {
    write(dir, "src/index.js", `import md from "./notes.md";\nexport default { fetch() { return new Response(md); } };\n`);
    write(dir, "src/notes.md", "# notes");
    const r = await bundle({ entry: "src/index.js", root: dir, outdir: join(dir, "o"), rules: [{ type: "Text", globs: ["**/*.md"] }] });
    assert.deepEqual(r.modules.map((m) => m.name), ["index.js", "src/notes.md.txt"]);
    assert.match(readFileSync(join(r.outdir, "index.js"), "utf8"), /"\.\/src\/notes\.md\.txt"/);
  } finally {
    cleanup(dir);
  }
});

test("globs", () => {
  assert.ok(globToRegExp("**/*.wasm").test("./a/b.wasm"));
  assert.ok(globToRegExp("**/*.wasm").test("b.wasm"));
  assert.ok(!globToRegExp("*.wasm").test("a/b.wasm"));
});
