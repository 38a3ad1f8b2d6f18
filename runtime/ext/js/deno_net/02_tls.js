// Stand-in for Deno's TLS helpers, which deno_fetch's custom HTTP client
// (`Deno.createHttpClient`) imports. Workers have no such API, so a worker
// can never reach this; it only satisfies the import.
(function () {
function loadTlsKeyPair() {
  throw new TypeError("client TLS certificates are not available in Isola");
}
return { loadTlsKeyPair };
})();
