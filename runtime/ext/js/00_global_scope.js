// The Workers global scope, built once at snapshot time from deno_web,
// deno_crypto and deno_fetch. Nothing here runs again when a worker isolate
// starts from the snapshot.
import { core, internals, primordials } from "ext:core/mod.js";

const {
  DateNow,
  DatePrototypeToString,
  Error,
  ObjectDefineProperty,
  ObjectGetPrototypeOf,
  ObjectSetPrototypeOf,
  PromisePrototypeThen,
  PromiseReject,
  ReflectApply,
  ReflectConstruct,
  PromisePrototypeCatch,
  SafeArrayIterator,
  StringPrototypeIncludes,
  StringPrototypeIndexOf,
  StringPrototypeSlice,
  Symbol,
  TypeError,
} = primordials;
// Bound from `core.ops` when the snapshot is built, and again by `init`.
let op_isola_fetch_span, op_isola_fetch_span_done, op_isola_log,
  op_isola_subrequest, op_isola_user_agent;
/** (Re)binds this module's ops; see `init` in 01_worker.js. */
function bindOps() {
  ({
    op_isola_fetch_span,
    op_isola_fetch_span_done,
    op_isola_log,
    op_isola_subrequest,
    op_isola_user_agent,
  } = core.ops);
}
bindOps();

// ---------------------------------------------------------------- web APIs --
const webidl = core.loadExtScript("ext:deno_webidl/00_webidl.js");
const consoleMod = core.loadExtScript("ext:deno_web/01_console.js");
const url = core.loadExtScript("ext:deno_web/00_url.js");
// Rarely used and large: loaded on first use, so idle isolates stay small.
const loadUrlPattern = () => core.loadExtScript("ext:deno_web/01_urlpattern.js");
const { DOMException } = core.loadExtScript("ext:deno_web/01_dom_exception.js");
const event = core.loadExtScript("ext:deno_web/02_event.js");
const timers = core.loadExtScript("ext:deno_web/02_timers.js");
const abortSignal = core.loadExtScript("ext:deno_web/03_abort_signal.js");
const base64 = core.loadExtScript("ext:deno_web/05_base64.js");
const streams = core.loadExtScript("ext:deno_web/06_streams.js");
const encoding = core.loadExtScript("ext:deno_web/08_text_encoding.js");
const file = core.loadExtScript("ext:deno_web/09_file.js");
const messagePort = core.loadExtScript("ext:deno_web/13_message_port.js");
const loadCompression = () => core.loadExtScript("ext:deno_web/14_compression.js");
const performanceMod = core.loadExtScript("ext:deno_web/15_performance.js");
const loadCrypto = () => core.loadExtScript("ext:deno_crypto/00_crypto.js");

// 26_fetch.js reads these telemetry hooks; Isola meters in Rust instead.
const DID_NOT_ENTER = Symbol("DID_NOT_ENTER");
const noop = () => {};
internals.__telemetry = {
  TRACING_ENABLED: false,
  PROPAGATORS: [],
  DID_NOT_ENTER,
  builtinTracer: () => {
    throw new Error("telemetry disabled");
  },
  ContextManager: { active: noop },
  enterSpan: () => DID_NOT_ENTER,
  exitSpan: noop,
  restoreSnapshot: noop,
};
internals.__telemetryUtil = {
  updateSpanFromClientResponse: noop,
  updateSpanFromError: noop,
  updateSpanFromRequest: noop,
};
const headers = core.loadExtScript("ext:deno_fetch/20_headers.js");
const formData = core.loadExtScript("ext:deno_fetch/21_formdata.js");
const request = core.loadExtScript("ext:deno_fetch/23_request.js");
const response = core.loadExtScript("ext:deno_fetch/23_response.js");
const fetchMod = core.loadExtScript("ext:deno_fetch/26_fetch.js");

core.setWasmStreamingCallback(fetchMod.handleWasmStreaming);

// Errors that ops throw by class name become these JS classes.
for (
  const [name, kind] of new SafeArrayIterator([
    ["DOMExceptionOperationError", "OperationError"],
    ["DOMExceptionNotSupportedError", "NotSupportedError"],
    ["DOMExceptionNetworkError", "NetworkError"],
    ["DOMExceptionAbortError", "AbortError"],
    ["DOMExceptionInvalidCharacterError", "InvalidCharacterError"],
    ["DOMExceptionDataError", "DataError"],
    ["DOMExceptionInvalidStateError", "InvalidStateError"],
    ["DOMExceptionSyntaxError", "SyntaxError"],
    ["DOMExceptionQuotaExceededError", "QuotaExceededError"],
    ["DOMExceptionTypeMismatchError", "TypeMismatchError"],
    ["DOMExceptionInvalidAccessError", "InvalidAccessError"],
    ["DOMExceptionIndexSizeError", "IndexSizeError"],
  ])
) {
  core.registerErrorBuilder(name, (msg) => new DOMException(msg, kind));
}

// ----------------------------------------------------------------- console --
// The invocation a log line belongs to rides on V8's continuation-preserved
// data, so lines written after an `await` are still attributed correctly.
function currentInvocation() {
  const ctx = core.getAsyncContext();
  return typeof ctx === "number" ? ctx : -1;
}
// Logs are read in terminals, files and dashboards alike: no ANSI colours.
consoleMod.setNoColorFns(() => true, () => true);
const console = new consoleMod.Console((msg, level) =>
  op_isola_log(currentInvocation(), level, msg)
);

// ------------------------------------------------------------------ clock --
// As on Workers, time does not advance while a handler runs synchronously:
// the runtime writes [epoch ms, ms since time origin] here each time it
// enters the isolate, so a busy loop cannot time itself (side channels).
let clock = null;
// Parenthesized: compiled into the startup snapshot (see 01_worker.js, warm).
const setClock = (function setClock(buffer) {
  clock = buffer;
});
function frozenNow() {
  return clock === null ? DateNow() : clock[0];
}
function frozenPerformanceNow() {
  return clock === null ? 0 : clock[1];
}
const OriginalDate = globalThis.Date;
function Date(...args) {
  if (new.target === undefined) {
    return DatePrototypeToString(new OriginalDate(frozenNow()));
  }
  if (args.length === 0) {
    return ReflectConstruct(OriginalDate, [frozenNow()], new.target);
  }
  return ReflectConstruct(OriginalDate, args, new.target);
}
ObjectDefineProperty(Date, "length", { value: 7, configurable: true });
ObjectDefineProperty(Date, "prototype", {
  value: OriginalDate.prototype,
  writable: false,
  enumerable: false,
  configurable: false,
});
ObjectDefineProperty(OriginalDate.prototype, "constructor", {
  value: Date,
  writable: true,
  enumerable: false,
  configurable: true,
});
ObjectSetPrototypeOf(Date, ObjectGetPrototypeOf(OriginalDate));
for (const name of new SafeArrayIterator(["parse", "UTC"])) {
  ObjectDefineProperty(Date, name, {
    value: OriginalDate[name],
    writable: true,
    enumerable: false,
    configurable: true,
  });
}
ObjectDefineProperty(Date, "now", {
  value: function now() {
    return frozenNow();
  },
  writable: true,
  enumerable: false,
  configurable: true,
});
ObjectDefineProperty(performanceMod.Performance.prototype, "now", {
  value: function now() {
    return frozenPerformanceNow();
  },
  writable: true,
  enumerable: true,
  configurable: true,
});

// ------------------------------------------------------------ subrequests --
function fetch(input, init = undefined) {
  const id = currentInvocation();
  if (id >= 0) {
    const counted = op_isola_subrequest(id);
    if (counted === 0) {
      return PromiseReject(
        new TypeError(
          "Too many subrequests: this invocation reached its limit of fetch() calls",
        ),
      );
    }
    // 2: the node exports spans; this fetch gets one and says so.
    if (counted === 2) return tracedFetch(id, input, init);
  }
  return PromisePrototypeCatch(
    ReflectApply(fetchMod.fetch, this, arguments),
    egressError,
  );
}

// A name the egress policy refused reaches JS as deno_fetch's generic
// `TypeError: fetch failed`, the reason in its cause; say it up front, as
// for an address refused before the request was sent.
const EGRESS_DENIED = "is denied by the egress policy";
function egressError(e) {
  const cause = e?.cause?.message;
  if (typeof cause === "string") {
    const at = StringPrototypeIndexOf(cause, "fetch() to ");
    if (at >= 0 && StringPrototypeIncludes(cause, EGRESS_DENIED)) {
      throw new TypeError(StringPrototypeSlice(cause, at));
    }
  }
  throw e;
}

// A fetch() with a span: its `traceparent` header names the span (unless
// the worker set one), and the span ends when the response headers come.
function tracedFetch(id, input, init) {
  let req;
  try {
    req = new request.Request(input, init);
  } catch (e) {
    return PromiseReject(e);
  }
  const traceparent = op_isola_fetch_span(id, req.method, req.url);
  if (traceparent === "") {
    return PromisePrototypeCatch(fetchMod.fetch(req), egressError);
  }
  if (!req.headers.has("traceparent")) {
    req.headers.set("traceparent", traceparent);
  }
  return PromisePrototypeThen(
    fetchMod.fetch(req),
    (res) => {
      op_isola_fetch_span_done(id, traceparent, res.status);
      return res;
    },
    (e) => {
      op_isola_fetch_span_done(id, traceparent, 0);
      egressError(e);
    },
  );
}

// --------------------------------------------------------------- navigator --
class Navigator {
  get userAgent() {
    return op_isola_user_agent();
  }
  get hardwareConcurrency() {
    return 1;
  }
  get language() {
    return "en";
  }
}
const navigator = new Navigator();

// --------------------------------------------------- global event listeners --
// Service-worker syntax: `addEventListener("fetch", (event) => ...)`.
const globalEvents = new event.EventTarget();
// `reportError()` and exceptions thrown by event listeners dispatch an
// "error" event on the global scope (deno_web's reportException).
event.saveGlobalThisReference(globalThis);

core.defineGlobalProperties(globalThis, {
  // Web platform classes.
  AbortController: core.propNonEnumerable(abortSignal.AbortController),
  AbortSignal: core.propNonEnumerable(abortSignal.AbortSignal),
  Blob: core.propNonEnumerable(file.Blob),
  ByteLengthQueuingStrategy: core.propNonEnumerable(
    streams.ByteLengthQueuingStrategy,
  ),
  CompressionStream: core.propNonEnumerableLazyLoaded(
    (m) => m.CompressionStream,
    loadCompression,
  ),
  CountQueuingStrategy: core.propNonEnumerable(streams.CountQueuingStrategy),
  Crypto: core.propNonEnumerableLazyLoaded((m) => m.Crypto, loadCrypto),
  CryptoKey: core.propNonEnumerableLazyLoaded((m) => m.CryptoKey, loadCrypto),
  CustomEvent: core.propNonEnumerable(event.CustomEvent),
  DecompressionStream: core.propNonEnumerableLazyLoaded(
    (m) => m.DecompressionStream,
    loadCompression,
  ),
  DOMException: core.propNonEnumerable(DOMException),
  ErrorEvent: core.propNonEnumerable(event.ErrorEvent),
  Event: core.propNonEnumerable(event.Event),
  EventTarget: core.propNonEnumerable(event.EventTarget),
  File: core.propNonEnumerable(file.File),
  FormData: core.propNonEnumerable(formData.FormData),
  Headers: core.propNonEnumerable(headers.Headers),
  MessageChannel: core.propNonEnumerable(messagePort.MessageChannel),
  MessageEvent: core.propNonEnumerable(event.MessageEvent),
  MessagePort: core.propNonEnumerable(messagePort.MessagePort),
  Navigator: core.propNonEnumerable(Navigator),
  Performance: core.propNonEnumerable(performanceMod.Performance),
  PromiseRejectionEvent: core.propNonEnumerable(event.PromiseRejectionEvent),
  ReadableByteStreamController: core.propNonEnumerable(
    streams.ReadableByteStreamController,
  ),
  ReadableStream: core.propNonEnumerable(streams.ReadableStream),
  ReadableStreamBYOBReader: core.propNonEnumerable(
    streams.ReadableStreamBYOBReader,
  ),
  ReadableStreamBYOBRequest: core.propNonEnumerable(
    streams.ReadableStreamBYOBRequest,
  ),
  ReadableStreamDefaultController: core.propNonEnumerable(
    streams.ReadableStreamDefaultController,
  ),
  ReadableStreamDefaultReader: core.propNonEnumerable(
    streams.ReadableStreamDefaultReader,
  ),
  Request: core.propNonEnumerable(request.Request),
  Response: core.propNonEnumerable(response.Response),
  SubtleCrypto: core.propNonEnumerableLazyLoaded((m) => m.SubtleCrypto, loadCrypto),
  TextDecoder: core.propNonEnumerable(encoding.TextDecoder),
  TextDecoderStream: core.propNonEnumerable(encoding.TextDecoderStream),
  TextEncoder: core.propNonEnumerable(encoding.TextEncoder),
  TextEncoderStream: core.propNonEnumerable(encoding.TextEncoderStream),
  TransformStream: core.propNonEnumerable(streams.TransformStream),
  TransformStreamDefaultController: core.propNonEnumerable(
    streams.TransformStreamDefaultController,
  ),
  URL: core.propNonEnumerable(url.URL),
  URLPattern: core.propNonEnumerableLazyLoaded((m) => m.URLPattern, loadUrlPattern),
  URLSearchParams: core.propNonEnumerable(url.URLSearchParams),
  WritableStream: core.propNonEnumerable(streams.WritableStream),
  WritableStreamDefaultController: core.propNonEnumerable(
    streams.WritableStreamDefaultController,
  ),
  WritableStreamDefaultWriter: core.propNonEnumerable(
    streams.WritableStreamDefaultWriter,
  ),

  // Functions and singletons.
  atob: core.propWritable(base64.atob),
  btoa: core.propWritable(base64.btoa),
  clearInterval: core.propWritable(timers.clearInterval),
  clearTimeout: core.propWritable(timers.clearTimeout),
  console: core.propNonEnumerable(console),
  crypto: core.propGetterOnly(() => loadCrypto().crypto),
  fetch: core.propWritable(fetch),
  Date: core.propNonEnumerable(Date),
  navigator: core.propGetterOnly(() => navigator),
  performance: core.propWritable(performanceMod.performance),
  reportError: core.propWritable(event.reportError),
  setInterval: core.propWritable(timers.setInterval),
  setTimeout: core.propWritable(timers.setTimeout),
  structuredClone: core.propWritable(messagePort.structuredClone),

  // The global scope itself.
  self: core.propGetterOnly(() => globalThis),
  addEventListener: core.propWritable((...args) =>
    globalEvents.addEventListener(...new SafeArrayIterator(args))
  ),
  removeEventListener: core.propWritable((...args) =>
    globalEvents.removeEventListener(...new SafeArrayIterator(args))
  ),
  dispatchEvent: core.propWritable((ev) => globalEvents.dispatchEvent(ev)),
});

export {
  bindOps as bindGlobalScopeOps,
  console,
  consoleMod,
  DOMException,
  event,
  globalEvents,
  performanceMod,
  request,
  response,
  setClock,
  streams,
};
