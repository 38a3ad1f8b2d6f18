// Bundles src/ into dist/ (one JS file, one CSS file, index.html). dist/ is committed, so
// `cargo build` needs no npm; CI rebuilds it and fails if it differs.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, statSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: { app: "src/app.ts" },
  bundle: true,
  minify: true,
  format: "iife",
  target: "es2022",
  outdir: "dist",
  legalComments: "none",
  logLevel: "warning",
});
await build({ entryPoints: { app: "src/style.css" }, bundle: true, minify: true, outdir: "dist", logLevel: "warning" });
copyFileSync("src/index.html", "dist/index.html");
for (const f of ["index.html", "app.js", "app.css"]) console.log(`dist/${f}: ${statSync(`dist/${f}`).size} bytes`);
