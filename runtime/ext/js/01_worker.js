// The dispatcher: turns a request from Rust into a JS `Request`, calls the
// worker's handler, and hands the `Response` back to Rust without
// re-serialising it.
import { core, primordials } from "ext:core/mod.js";
import {
  bindGlobalScopeOps,
  console,
  consoleMod,
  DOMException,
  event,
  globalEvents,
  performanceMod,
  request as requestMod,
  response as responseMod,
  setClock,
  streams,
} from "ext:isola_worker/00_global_scope.js";
import { addKvBindings } from "ext:isola_kv/01_kv.js";
import { addQueueBindings, messageBatch } from "ext:isola_queue/01_queue.js";

const {
  ArrayPrototypePush,
  Error,
  FunctionPrototypeCall,
  ObjectDefineProperty,
  ObjectFreeze,
  ObjectGetOwnPropertyNames,
  ObjectPrototypeIsPrototypeOf,
  PromisePrototypeCatch,
  Proxy,
  String,
  Symbol,
  PromisePrototypeThen,
  PromiseResolve,
  ReflectApply,
  JSONParse,
  SafePromiseAllSettled,
  ArrayPrototypeIncludes,
  ObjectGetPrototypeOf,
  ObjectPrototype,
  PromiseReject,
  TypedArrayPrototypeGetByteLength,
  TypeError,
  TypedArrayPrototypeGetSymbolToStringTag,
  Float64Array,
  TypedArrayPrototypeGetBuffer,
  Uint8Array,
  ArrayPrototypeFilter,
  ArrayPrototypeJoin,
  ObjectKeys,
  ObjectHasOwn,
  StringPrototypeIncludes,
  StringPrototypeReplaceAll,
  StringPrototypeSplit,
  StringPrototypeToLowerCase,
} = primordials;
// Bound from `core.ops` when the snapshot is built, and again by `init`.
let op_isola_set_clock, op_isola_env, op_isola_fail, op_isola_invocation_done,
  op_isola_invocations,
  op_isola_response_header, op_isola_respond_text, op_isola_respond_bytes,
  op_isola_respond_stream, op_isola_done_ok, op_isola_no_retry,
  op_isola_return, op_isola_throw, op_isola_missing,
  op_isola_service_bindings, op_isola_service_fetch, op_isola_service_call;
function bindOps() {
  ({
    op_isola_set_clock,
    op_isola_env,
    op_isola_fail,
    op_isola_invocation_done,
    op_isola_invocations,
    op_isola_response_header,
    op_isola_respond_text,
    op_isola_respond_bytes,
    op_isola_respond_stream,
    op_isola_done_ok,
    op_isola_no_retry,
    op_isola_return,
    op_isola_throw,
    op_isola_missing,
    op_isola_service_bindings,
    op_isola_service_fetch,
    op_isola_service_call,
  } = core.ops);
}
bindOps();
const { fromInnerRequest, Request, toInnerRequest } = requestMod;
const {
  Response,
  ResponsePrototype,
  toInnerResponse,
  responseBodyUsed,
  serveFastStatusKey,
  serveFastBodyKey,
  serveFastHeaderKindKey,
  serveFastContentTypeKey,
  serveFastConsumedKey,
  SERVE_FAST_HEADER_DEFAULT_TEXT,
  SERVE_FAST_HEADER_CONTENT_TYPE,
} = responseMod;
const {
  readableStreamForRid,
  resourceForReadableStream,
  isReadableStream,
  readableStreamClose,
  readableStreamDisturb,
  ReadableStream,
} = streams;
const { InnerBody } = core.loadExtScript("ext:deno_fetch/22_body.js");
const { URL } = core.loadExtScript("ext:deno_web/00_url.js");

// ------------------------------------------------------------ error text --
function describe(err) {
  if (ObjectPrototypeIsPrototypeOf(Error.prototype, err)) {
    return cleanStack(err.stack ?? `${err.name}: ${err.message}`);
  }
  try {
    return `Uncaught ${consoleMod.inspect(err)}`;
  } catch {
    return "Uncaught (an exception that cannot be printed)";
  }
}

/** Stack text as the user knows their files: no `file:///`, no runtime frames. */
function cleanStack(stack) {
  const lines = StringPrototypeSplit(
    StringPrototypeReplaceAll(String(stack), "file:///", ""),
    "\n",
  );
  return ArrayPrototypeJoin(
    ArrayPrototypeFilter(
      lines,
      (line) => !StringPrototypeIncludes(line, "(ext:") && !StringPrototypeIncludes(line, "at ext:"),
    ),
    "\n",
  );
}

// ----------------------------------------------------------------- state --
let env = {};
/** The module worker's default export, or null for service-worker syntax. */
let entry = null;
/** A class default export (`class extends WorkerEntrypoint`), instantiated per request. */
let entryClass = null;
/** The main module's namespace: named entrypoints of service bindings. */
let exports = null;
/**
 * The isolate's invocations (`op_isola_invocations`, set by `init`): the
 * first argument of the ops that send a response or end an invocation.
 */
let invocations = null;

// ------------------------------------------------------------ FetchEvent --
/** The promise given to `event.respondWith()`, or null; module-private. */
let responseOf;
class FetchEvent extends event.Event {
  #ctx;
  #response = null;
  static {
    responseOf = (ev) => ev.#response;
  }
  constructor(type, init, ctx) {
    super(type);
    ObjectDefineProperty(this, "request", {
      value: init.request,
      enumerable: true,
    });
    this.#ctx = ctx;
  }
  respondWith(response) {
    if (this.#response !== null) {
      throw new DOMException("respondWith() was already called", "InvalidStateError");
    }
    this.#response = PromiseResolve(response);
  }
  waitUntil(promise) {
    this.#ctx.waitUntil(promise);
  }
  passThroughOnException() {
    this.#ctx.passThroughOnException();
  }
}

// ------------------------------------------------------ ExecutionContext --
class ExecutionContext {
  #invocation;
  constructor(invocation) {
    this.#invocation = invocation;
  }
  waitUntil(promise) {
    const inv = this.#invocation;
    inv.pending++;
    PromisePrototypeThen(
      PromiseResolve(promise),
      () => settle(inv),
      (err) => {
        if (inv.scheduled) {
          // The run's first rejection is its exception, logged once at the end.
          if (!inv.failed) {
            inv.failed = true;
            inv.error = err;
          }
        } else {
          console.error(`ctx.waitUntil() promise rejected: ${describe(err)}`);
        }
        settle(inv);
      },
    );
  }
  passThroughOnException() {
    this.#invocation.passThrough = true;
  }
}

const settle = (function settle(inv) {
  inv.pending--;
  if (inv.pending === 0 && inv.responded) {
    if (inv.body) inv.body.release();
    if (inv.scheduled) {
      if (inv.failed) failWith(inv.id, inv.error, describe(inv.error));
      else op_isola_done_ok(inv.id);
    }
    op_isola_invocation_done(invocations, inv.id);
  }
});

// ----------------------------------------------------------- entrypoints --
/** What a handler lookup returns when the worker lacks that handler. */
const NO_HANDLER = Symbol("NO_HANDLER");

/**
 * The object whose methods serve an invocation: an instance of the class
 * (called with the invocation's arguments alone, `this.env`/`this.ctx` set)
 * or the exported object (called with `env` and `ctx` appended); null for
 * service-worker syntax.
 */
const receiver = (function receiver(entrypoint, ctx) {
  const exported = entrypoint === null
    ? (entryClass ?? entry)
    : (exports !== null && ObjectHasOwn(exports, entrypoint) ? exports[entrypoint] : undefined);
  if (typeof exported === "function") {
    return { target: new exported(ctx, env), classStyle: true };
  }
  if (exported !== null && typeof exported === "object") {
    return { target: exported, classStyle: false };
  }
  if (entrypoint !== null) {
    throw new TypeError(
      `The worker has no export named "${entrypoint}" to serve this service binding`,
    );
  }
  return null;
});

/**
 * Calls handler `name` of the entrypoint with `arg` (and `env`, `ctx` for
 * an exported object); NO_HANDLER if it has none. A direct call: through
 * an array and `Reflect.apply` it cost two builtins and an array a request.
 */
const callHandler = (function callHandler(found, name, arg, ctx) {
  const target = found.target;
  const f = target[name];
  if (typeof f !== "function") return NO_HANDLER;
  return found.classStyle
    ? FunctionPrototypeCall(f, target, arg)
    : FunctionPrototypeCall(f, target, arg, env, ctx);
});

// -------------------------------------------------------------- dispatch --
/** The header list of the name/value pairs in `flat[from..to]`. */
function headerList(flat, from, to) {
  const list = [];
  for (let i = from; i < to; i += 2) {
    ArrayPrototypePush(list, [flat[i], flat[i + 1]]);
  }
  return list;
}

/** The value of lowercase `name` among the pairs in `flat[from..to]`, several joined by ", ". */
function flatHeader(flat, from, to, name) {
  let found = null;
  for (let i = from; i < to; i += 2) {
    if (flat[i] === name) {
      found = found === null ? flat[i + 1] : `${found}, ${flat[i + 1]}`;
    }
  }
  return found;
}

/**
 * An incoming request's inner request: the fields deno_fetch's
 * `newInnerRequest` gives one, with the accessors on this prototype. That
 * function returns an object literal with getters, and V8 defines each
 * getter anew (a runtime call, then a dictionary-mode object) every time it
 * runs, which cost more than the rest of the request's JS. The header list
 * is still built only when first read, from the request's part of the
 * dispatcher's arguments (`flat[from..to]`, not copied out).
 */
class IncomingInnerRequest {
  constructor(method, url, flat, from, to, body) {
    this.method = method;
    this.headerListInner = null;
    this.flatHeaders = flat;
    this.flatFrom = from;
    this.flatTo = to;
    this.body = body;
    this.redirectMode = "follow";
    this.redirectCount = 0;
    this.urlValue = url;
    this.urlListInner = null;
    this.urlListProcessedInner = null;
    this.clientRid = null;
    this.blobUrlEntry = null;
  }
  get headerList() {
    if (this.headerListInner === null) {
      this.headerListInner = headerList(this.flatHeaders, this.flatFrom, this.flatTo);
      this.flatHeaders = null;
    }
    return this.headerListInner;
  }
  set headerList(value) {
    this.headerListInner = value;
    this.flatHeaders = null;
  }
  /**
   * One header's value (several joined by ", "), or null: what
   * `request.headers.get()` asks before the header list exists, so a
   * handler that reads a few headers never builds it.
   */
  header(name) {
    const flat = this.flatHeaders;
    if (flat !== null) {
      // The names there are lowercase (as hyper parses them), and handlers
      // mostly ask in lowercase: the name as given finds them without
      // lowercasing it (~160 instructions a call), which only a miss needs.
      const found = flatHeader(flat, this.flatFrom, this.flatTo, name);
      if (found !== null) return found;
      const lower = StringPrototypeToLowerCase(name);
      return lower === name ? null : flatHeader(flat, this.flatFrom, this.flatTo, lower);
    }
    const lower = StringPrototypeToLowerCase(name);
    let found = null;
    const list = this.headerListInner;
    for (let i = 0; i < list.length; i++) {
      if (StringPrototypeToLowerCase(list[i][0]) === lower) {
        found = found === null ? list[i][1] : `${found}, ${list[i][1]}`;
      }
    }
    return found;
  }
  /**
   * The URL lists deno_fetch reads and grows (a `fetch()` of the request,
   * its redirects), made when first read: most requests never are, and
   * made eagerly they were two arrays and a closure per request (with the
   * getters, `hello`'s JS took ~120 fewer instructions a request).
   */
  get urlList() {
    if (this.urlListInner === null) {
      const url = this.urlValue;
      this.urlListInner = [() => url];
    }
    return this.urlListInner;
  }
  set urlList(value) {
    this.urlListInner = value;
  }
  get urlListProcessed() {
    if (this.urlListProcessedInner === null) {
      this.urlListProcessedInner = [this.urlValue];
    }
    return this.urlListProcessedInner;
  }
  set urlListProcessed(value) {
    this.urlListProcessedInner = value;
  }
  url() {
    return this.urlValue;
  }
  currentUrl() {
    const last = this.urlList.length - 1;
    if (this.urlListProcessed[last] === undefined) {
      this.urlListProcessed[last] = this.urlList[last]();
    }
    return this.urlListProcessed[last];
  }
}

// ------------------------------------------------------------ request body --
const _rid = Symbol("[[rid]]");
const _stream = Symbol("[[stream]]");
const _state = Symbol("[[state]]");
/** Where a body without a stream is: its resource open, read whole, or closed unread. */
const OPEN = 0;
const READ = 1;
const ENDED_UNREAD = 2;
/** Passed to `InnerBody`'s constructor: the body has no stream yet. */
const LAZY = { __proto__: null };
const ENDED =
  "This request's body can no longer be read: the invocation it came with has ended. Read it in the handler, or in ctx.waitUntil(), before that.";

/**
 * A request body that stays its resource until something asks for a
 * stream (`request.body`, `clone()`, passing the request on to `fetch()`).
 * `arrayBuffer()`, `text()`, `json()`... read the resource whole with one op
 * and make no `ReadableStream`: most handlers only read it that way, and a
 * stream is a dozen objects, closures and promises per request, registered
 * with a FinalizationRegistry. A small body the edge had whole when the
 * invocation started comes as its bytes instead of a resource: read with
 * no op at all.
 */
class RequestBody extends InnerBody {
  /** The resource id, or the whole body's `Uint8Array`. */
  [_rid];
  /** The stream once made; null while the body is only its resource. */
  [_stream] = null;
  /** While there is no stream: OPEN, READ or ENDED_UNREAD. */
  [_state] = OPEN;

  constructor(ridOrBytes) {
    super(LAZY);
    this[_rid] = ridOrBytes;
    if (typeof ridOrBytes !== "number") {
      this.length = TypedArrayPrototypeGetByteLength(ridOrBytes);
    }
  }

  get streamOrStatic() {
    let stream = this[_stream];
    if (stream === null) {
      if (this[_state] === ENDED_UNREAD) {
        stream = new ReadableStream({
          start(controller) {
            controller.error(new TypeError(ENDED));
          },
        });
      } else if (this[_state] === READ) {
        // What `InnerBody` makes for a body already read: locked, disturbed, closed.
        stream = new ReadableStream();
        stream.getReader();
        readableStreamDisturb(stream);
        readableStreamClose(stream);
      } else if (typeof this[_rid] === "number") {
        stream = readableStreamForRid(this[_rid]);
      } else {
        const bytes = this[_rid];
        stream = new ReadableStream({
          start(controller) {
            controller.enqueue(bytes);
            controller.close();
          },
        });
      }
      this[_stream] = stream;
    }
    return stream;
  }

  set streamOrStatic(value) {
    if (value !== LAZY) this[_stream] = value;
  }

  unusable() {
    return this[_stream] === null ? this[_state] === READ : super.unusable();
  }

  consumed() {
    return this[_stream] === null ? this[_state] === READ : super.consumed();
  }

  consume() {
    if (this[_stream] !== null) return super.consume();
    if (this[_state] === ENDED_UNREAD) throw new TypeError(ENDED);
    if (this[_state] === READ) throw new TypeError("Body already consumed");
    this[_state] = READ;
    const rid = this[_rid];
    if (typeof rid !== "number") return rid;
    // As `InnerBody` reads a resource-backed stream: one op, then close.
    return PromisePrototypeCatch(
      PromisePrototypeThen(core.readAll(rid), (bytes) => {
        core.tryClose(rid);
        return bytes;
      }),
      (e) => {
        core.tryClose(rid);
        if (ObjectPrototypeIsPrototypeOf(core.BadResourcePrototype, e)) {
          throw new e.constructor(
            "Cannot read body as underlying resource unavailable",
          );
        }
        throw e;
      },
    );
  }

  /** The invocation is over: a body nobody asked for is closed now. */
  release() {
    if (this[_stream] === null && this[_state] === OPEN) {
      this[_state] = ENDED_UNREAD;
      if (typeof this[_rid] === "number") core.tryClose(this[_rid]);
    }
  }
}

/**
 * The bytes of `request`'s body if it is an incoming one the edge had whole
 * (see `RequestBody`) and still unread, now consumed; else undefined.
 */
function takeBytesAtHand(request) {
  // As deno_fetch's readers check first: no other object is asked for the
  // request's internals.
  if (!ObjectPrototypeIsPrototypeOf(RequestPrototype, request)) return undefined;
  const body = toInnerRequest(request)?.body;
  if (
    !ObjectPrototypeIsPrototypeOf(RequestBodyPrototype, body) ||
    body[_stream] !== null || body[_state] !== OPEN || typeof body[_rid] === "number"
  ) {
    return undefined;
  }
  return body.consume();
}

/**
 * `Request.prototype`'s `arrayBuffer()`, `bytes()`, `text()` and `json()`
 * for a body at hand: a promise of the result, where deno_fetch's
 * `consumeBody` (an async function) awaits the bytes first. Awaiting a
 * value that is not a promise makes a promise of it and looks up its
 * `then` through the `Uint8Array` prototypes, which with many tenants
 * taking turns are out of the cache (~1 microsecond a request). Any other
 * request or body takes deno_fetch's method.
 */
function consumeAtHand(name, make) {
  const original = RequestPrototype[name];
  const method = {
    [name]() {
      const bytes = takeBytesAtHand(this);
      if (bytes === undefined) return FunctionPrototypeCall(original, this);
      try {
        return PromiseResolve(make(bytes));
      } catch (e) {
        return PromiseReject(e);
      }
    },
  }[name];
  ObjectDefineProperty(RequestPrototype, name, {
    __proto__: null,
    value: method,
    writable: true,
    configurable: true,
    enumerable: true,
  });
}
const RequestBodyPrototype = RequestBody.prototype;
const RequestPrototype = Request.prototype;
consumeAtHand("arrayBuffer", (bytes) => TypedArrayPrototypeGetBuffer(bytes));
consumeAtHand("bytes", (bytes) => bytes);
consumeAtHand("text", (bytes) => core.decode(bytes));
consumeAtHand("json", (bytes) => JSONParse(core.decode(bytes)));

/**
 * Called from Rust for a request that came alone.
 * @param {number} id invocation id
 * @param {string} method
 * @param {string} url absolute URL
 * @param {number | null} bodyRid resource id of the request body stream
 * @param {string | null} entrypoint named export a service binding calls
 * @param {...string} headers flat name/value list
 */
const dispatch = (function dispatch(id, method, url, bodyRid, entrypoint, ...headers) {
  dispatchOne(id, method, url, bodyRid, entrypoint, headers, 0, headers.length);
});

/**
 * Called from Rust for the requests that came together (one wake-up of the
 * worker): each as `dispatch`'s arguments, with its headers' count before
 * them. One call into the isolate for all of them instead of one each: a
 * call from Rust (entering V8, its scopes) cost ~700 instructions.
 */
const dispatchAll = (function dispatchAll(...args) {
  for (let i = 0; i < args.length;) {
    const from = i + 6;
    const to = from + args[i + 5];
    dispatchOne(args[i], args[i + 1], args[i + 2], args[i + 3], args[i + 4], args, from, to);
    i = to;
  }
});

/**
 * Starts invocation `id` with its request; its headers are the name/value
 * pairs in `flat[from..to]`.
 */
const dispatchOne = (function dispatchOne(id, method, url, bodyRid, entrypoint, flat, from, to) {
  const body = bodyRid === null ? null : new RequestBody(bodyRid);
  const inner = new IncomingInnerRequest(method, url, flat, from, to, body);
  const request = fromInnerRequest(inner, "immutable");
  const inv = { id, pending: 1, responded: false, passThrough: false, body };
  const ctx = new ExecutionContext(inv);

  const prevContext = core.getAsyncContext();
  core.setAsyncContext(id);
  let result;
  try {
    const found = receiver(entrypoint, ctx);
    result = found === null
      ? dispatchFetchEvent(request, ctx)
      : callHandler(found, "fetch", request, ctx);
    if (result === NO_HANDLER) {
      throw new TypeError("Handler does not export a fetch() function.");
    }
  } catch (err) {
    fail(inv, err);
    return;
  } finally {
    core.setAsyncContext(prevContext);
  }
  if (ObjectPrototypeIsPrototypeOf(ResponsePrototype, result)) {
    respond(inv, result);
  } else {
    // Parenthesized: compiled with `dispatch`, so in the snapshot.
    PromisePrototypeThen(
      PromiseResolve(result),
      ((response) => respond(inv, response)),
      ((err) => fail(inv, err)),
    );
  }
});

function dispatchFetchEvent(request, ctx) {
  if (event.listenerCount(globalEvents, "fetch") === 0) {
    throw new TypeError("Handler does not export a fetch() function.");
  }
  const ev = new FetchEvent("fetch", { request }, ctx);
  globalEvents.dispatchEvent(ev);
  const response = responseOf(ev);
  if (response === null) {
    throw new TypeError(
      "No response: the \"fetch\" event listener did not call event.respondWith()",
    );
  }
  return response;
}

const respond = (function respond(inv, response) {
  // The usual end (a full body, no waitUntil work, no request body
  // resource to close): the response op also ends the invocation's JS, one
  // op call instead of two.
  const body = inv.body;
  const last = inv.pending === 1 && !inv.responded &&
    (body === null || typeof body[_rid] !== "number");
  let ended;
  try {
    if (!ObjectPrototypeIsPrototypeOf(ResponsePrototype, response)) {
      throw new TypeError(
        `The handler returned ${describeValue(response)}, not a Response`,
      );
    }
    ended = sendStatic(inv.id, response, last)
      ? last
      : sendInner(inv.id, response, last);
  } catch (err) {
    fail(inv, err);
    return;
  }
  if (ended) {
    inv.responded = true;
    inv.pending = 0;
    // A whole body has nothing to close; it only stops being readable.
    if (body !== null) body.release();
  } else {
    done(inv);
  }
});

/** Sends `response` from its inner response; see `send`. */
const sendInner = (function sendInner(id, response, last) {
  const inner = toInnerResponse(response);
  if (inner === undefined) {
    throw new TypeError("The handler returned an object that is not a Response made by `new Response()`");
  }
  let body = null;
  if (inner.body !== null) {
    const s = inner.body.streamOrStatic;
    if (!isReadableStream(s)) {
      s.consumed = true;
      body = s.body;
    } else {
      body = resourceForReadableStream(s, inner.body.length);
    }
  }
  return send(id, inner.status, inner.headerList, body, last);
});

/**
 * Sends `response` as the constructor left it when it is a static body
 * (a string or bytes, with at most a content type), as `deno serve` does:
 * without making its header list (~280 instructions of a hello-world
 * request). Returns whether it did; the response's body then reads as
 * used, as after any other send.
 */
const sendStatic = (function sendStatic(id, response, last) {
  const status = response[serveFastStatusKey];
  if (status === 0 || status === undefined) return false;
  const body = response[serveFastBodyKey];
  if (body === null || responseBodyUsed(response)) return false;
  response[serveFastConsumedKey] = true;
  const kind = response[serveFastHeaderKindKey];
  const type = kind === SERVE_FAST_HEADER_DEFAULT_TEXT
    ? "text/plain;charset=UTF-8"
    : kind === SERVE_FAST_HEADER_CONTENT_TYPE
    ? response[serveFastContentTypeKey]
    : "";
  sendBody(id, status, body, type, last);
  return true;
});

/**
 * Sends invocation `id`'s response: a fast op per header, then the op for
 * its body's kind (none or text, bytes, or a stream's resource id). With
 * `last`, a full body's op also ends the invocation's JS; returns whether
 * it did.
 */
const send = (function send(id, status, headerList, body, last) {
  for (let i = 0; i < headerList.length; i++) {
    const header = headerList[i];
    op_isola_response_header(invocations, id, header[0], header[1]);
  }
  return sendBody(id, status, body, "", last);
});

/**
 * The op for `body`'s kind, after the headers; returns `send`'s answer. A
 * full body's op also adds `type` as the content type unless it is empty
 * (one op call where a header's would be a second).
 */
const sendBody = (function sendBody(id, status, body, type, last) {
  if (body === null) {
    op_isola_respond_text(invocations, id, status, "", type, last);
  } else if (typeof body === "string") {
    op_isola_respond_text(invocations, id, status, body, type, last);
  } else if (typeof body === "number") {
    op_isola_respond_stream(id, status, body);
    return false;
  } else {
    op_isola_respond_bytes(invocations, id, status, body, type, last);
  }
  return last;
});

function fail(inv, err) {
  let message = describe(err);
  if (inv.passThrough) {
    message +=
      "\n(passThroughOnException() was called, but this node has no origin to pass the request to)";
  }
  failWith(inv.id, err, message);
  done(inv);
}

/** Ends invocation `id` with `err`; `logged` (its stack) goes to the log. */
function failWith(id, err, logged) {
  let name = "Error";
  let message = logged;
  if (ObjectPrototypeIsPrototypeOf(Error.prototype, err)) {
    try {
      name = String(err.name);
      message = String(err.message);
    } catch {
      // An error whose name or message cannot be read keeps the defaults.
    }
  }
  op_isola_fail(id, logged, name, message);
}

const done = (function done(inv) {
  if (inv.responded) return;
  inv.responded = true;
  settle(inv);
});

// ------------------------------------------------------------- scheduled --
/** Only the dispatcher makes controllers and events. */
const INTERNAL = Symbol("INTERNAL");

class ScheduledController {
  #id;
  constructor(key, id, cron, scheduledTime) {
    if (key !== INTERNAL) throw new TypeError("Illegal constructor");
    this.#id = id;
    ObjectDefineProperty(this, "cron", { value: cron, enumerable: true });
    ObjectDefineProperty(this, "scheduledTime", { value: scheduledTime, enumerable: true });
    ObjectDefineProperty(this, "type", { value: "scheduled", enumerable: true });
  }
  noRetry() {
    op_isola_no_retry(this.#id);
  }
}

class ScheduledEvent extends event.Event {
  #id;
  #ctx;
  constructor(key, id, cron, scheduledTime, ctx) {
    if (key !== INTERNAL) throw new TypeError("Illegal constructor");
    super("scheduled");
    this.#id = id;
    this.#ctx = ctx;
    ObjectDefineProperty(this, "cron", { value: cron, enumerable: true });
    ObjectDefineProperty(this, "scheduledTime", { value: scheduledTime, enumerable: true });
  }
  noRetry() {
    op_isola_no_retry(this.#id);
  }
  waitUntil(promise) {
    this.#ctx.waitUntil(promise);
  }
}

const NO_SCHEDULED =
  "the worker has no scheduled handler: add `export default { async scheduled(controller, env, ctx) { ... } }` or call `addEventListener(\"scheduled\", (event) => ...)`";

/**
 * Called from Rust for a cron tick. The run ends once the handler and every
 * `waitUntil` promise settled; the first rejection is its exception.
 */
function scheduled(id, cron, scheduledTime) {
  runEvent(id, NO_SCHEDULED, (ctx) => {
    const found = receiver(null, ctx);
    if (found !== null) {
      const controller = new ScheduledController(INTERNAL, id, cron, scheduledTime);
      return callHandler(found, "scheduled", controller, ctx);
    }
    if (event.listenerCount(globalEvents, "scheduled") === 0) return NO_HANDLER;
    globalEvents.dispatchEvent(new ScheduledEvent(INTERNAL, id, cron, scheduledTime, ctx));
    return undefined;
  });
}

/**
 * Runs a non-HTTP event (a cron tick, a queue batch) to its end: `start`
 * calls the handler; the invocation ends once it and every `waitUntil`
 * promise settled, and the first rejection is its exception. `missing` is
 * what the error says when `start` finds no handler.
 */
function runEvent(id, missing, start) {
  const inv = {
    id,
    pending: 1,
    responded: false,
    passThrough: false,
    scheduled: true,
    failed: false,
    error: undefined,
  };
  const ctx = new ExecutionContext(inv);
  const prevContext = core.getAsyncContext();
  core.setAsyncContext(id);
  let result;
  try {
    result = start(ctx);
  } catch (err) {
    result = PromiseReject(err);
  } finally {
    core.setAsyncContext(prevContext);
  }
  if (result === NO_HANDLER) {
    op_isola_missing(id, missing);
    op_isola_invocation_done(invocations, id);
    return;
  }
  const end = (err, failed) => {
    if (failed && !inv.failed) {
      inv.failed = true;
      inv.error = err;
    }
    inv.responded = true;
    settle(inv);
  };
  PromisePrototypeThen(
    PromiseResolve(result),
    () => end(undefined, false),
    (err) => end(err, true),
  );
}

// ----------------------------------------------------------------- queue --
const NO_QUEUE =
  "the worker has no queue handler: add `export default { async queue(batch, env, ctx) { ... } }`";

/**
 * Called from Rust for a batch of a queue this worker consumes. Like a
 * scheduled run, it ends once the handler and every `waitUntil` promise
 * settled; the first rejection is its exception. What becomes of each
 * message is decided in Rust from the calls recorded there.
 */
function queue(id) {
  runEvent(id, NO_QUEUE, (ctx) => {
    const found = receiver(null, ctx);
    return found === null
      ? NO_HANDLER
      : callHandler(found, "queue", messageBatch(id), ctx);
  });
}

// ------------------------------------------------------------------- RPC --
/** Names a binding answers itself, never as RPC methods (as on Workers). */
function reservedMethod(name) {
  return name === "fetch" || name === "connect" || name === "constructor";
}

/** Called from Rust for `env.BINDING.method(...args)` of another worker. */
function call(id, entrypoint, method, args) {
  const inv = { id, pending: 1, responded: false, passThrough: false };
  const ctx = new ExecutionContext(inv);
  const prevContext = core.getAsyncContext();
  core.setAsyncContext(id);
  let result;
  try {
    if (reservedMethod(method)) {
      throw new TypeError(`"${method}" cannot be called as an RPC method`);
    }
    const found = receiver(entrypoint, ctx);
    if (found === null) {
      throw new TypeError(
        "The worker uses service-worker syntax, which has no RPC methods; export a class that extends WorkerEntrypoint",
      );
    }
    const f = found.target[method];
    // Object.prototype's methods (valueOf would hand over `this.env`) are
    // not the worker's API.
    if (typeof f !== "function" || f === ObjectPrototype[method]) {
      throw new TypeError(`The RPC receiver does not implement the method "${method}".`);
    }
    result = ReflectApply(f, found.target, core.deserialize(args));
  } catch (err) {
    throwBack(inv, err);
    return;
  } finally {
    core.setAsyncContext(prevContext);
  }
  PromisePrototypeThen(
    PromiseResolve(result),
    (value) => {
      let bytes;
      try {
        bytes = core.serialize(value);
      } catch (err) {
        throwBack(inv, err);
        return;
      }
      op_isola_return(id, bytes);
      done(inv);
    },
    (err) => throwBack(inv, err),
  );
}

function throwBack(inv, err) {
  const isError = ObjectPrototypeIsPrototypeOf(Error.prototype, err);
  let name = "Error";
  let message;
  try {
    name = isError ? String(err.name) : "Error";
    message = isError ? String(err.message) : describe(err);
  } catch {
    message = "an error that cannot be printed";
  }
  op_isola_throw(inv.id, name, message, describe(err));
  done(inv);
}

/** `env.BINDING`: `fetch()` calls the other worker's fetch handler, any other method is RPC. */
function serviceStub(binding) {
  const stubFetch = (input, init = undefined) => serviceFetch(binding, input, init);
  const connect = () => {
    throw new TypeError("connect() through a service binding is not supported");
  };
  const methods = { __proto__: null };
  return new Proxy({ __proto__: null }, {
    get(_target, prop) {
      if (prop === "fetch") return stubFetch;
      if (prop === "connect") return connect;
      // Not a thenable, and symbols are no methods.
      if (typeof prop !== "string" || prop === "then") return undefined;
      return methods[prop] ??= (...args) => serviceCall(binding, prop, args);
    },
  });
}

function currentId() {
  const id = core.getAsyncContext();
  return typeof id === "number" ? id : -1;
}

const NULL_BODY_STATUS = [101, 204, 205, 304];

async function serviceFetch(binding, input, init) {
  const id = currentId();
  const request = new Request(input, init);
  const flat = toInnerRequest(request).headerList;
  const bodyRid = request.body === null ? -1 : resourceForReadableStream(request.body);
  const head = await op_isola_service_fetch(
    id,
    binding,
    request.method,
    request.url,
    flat,
    bodyRid,
  );
  const status = head.status;
  const nullBody = head.bodyRid === null || ArrayPrototypeIncludes(NULL_BODY_STATUS, status);
  return new Response(nullBody ? null : readableStreamForRid(head.bodyRid), {
    status,
    headers: head.headers,
  });
}

async function serviceCall(binding, method, args) {
  const id = currentId();
  const reply = await op_isola_service_call(id, binding, method, core.serialize(args));
  if (reply.value !== null) {
    return core.deserialize(reply.value);
  }
  const err = new Error(reply.message);
  if (reply.name !== "Error") {
    ObjectDefineProperty(err, "name", {
      value: reply.name,
      writable: true,
      configurable: true,
      enumerable: false,
    });
  }
  throw err;
}

function describeValue(v) {
  if (v === null) return "null";
  if (v === undefined) return "undefined";
  if (typeof v === "object") {
    return TypedArrayPrototypeGetSymbolToStringTag(v) ?? "an object";
  }
  return `a ${typeof v}`;
}

// ------------------------------------------------------------------ warm --
/**
 * Runs the request path's JS once while the startup snapshot is made
 * (build.rs), with no worker and no invocation (so no op): requests built
 * as `dispatchOne` builds them (a flat header list; no body, or a small
 * one the edge had whole), headers, URL and body read as most handlers
 * read them, responses made as handlers make them (a static body; bytes
 * with headers of their own) and read as `respond` reads them. V8
 * compiles a function on its first call and keeps the bytecode in the
 * snapshot, so no isolate compiles these again: each one left to a first
 * request cost it ~60,000 instructions (25 of them on `echo`'s first). The
 * functions this cannot call (they call ops) are parenthesized instead: V8
 * compiles a parenthesized function expression eagerly, so they are in the
 * snapshot compiled too. What it makes is kept (`warmKept`), in the state
 * a request leaves it: V8 drops the map transitions of objects that died
 * before the snapshot, and a field's type widens when a first request
 * stores what warm never did; either way each isolate would redo it on
 * its first request. Each blank isolate of a node's stock runs it once
 * more (`Isolate::prewarm`).
 */
function warm() {
  const flat = ["accept", "*/*", "user-agent", "isola", "content-type", "text/plain"];
  // A request without a body first, as most are; then one with a body.
  const got = fromInnerRequest(
    new IncomingInnerRequest("GET", "http://localhost/", flat, 0, flat.length, null),
    "immutable",
  );
  const body = new RequestBody(new Uint8Array(4));
  const inner = new IncomingInnerRequest("POST", "http://localhost/", flat, 0, flat.length, body);
  // init sets the real origin when a worker is loaded.
  performanceMod.setTimeOrigin();
  const request = fromInnerRequest(inner, "immutable");
  const headers = request.headers;
  headers.get("accept");
  headers.get("x-request-id");
  headers.get("Content-Type");
  const url = new URL(request.url);
  void url.pathname;
  void url.searchParams;
  void request.method;
  // The invocations of both: their `body` field holds null or a body.
  const invGot = { id: 0, pending: 1, responded: false, passThrough: false, body: null };
  const inv = { id: 0, pending: 1, responded: false, passThrough: false, body };
  const ctx = new ExecutionContext(inv);
  const read = request.arrayBuffer();
  // As `sendStatic` reads and marks a response of a string and a content type.
  const response = new Response("warm", {
    status: 200,
    headers: { "content-type": "text/plain" },
  });
  responseBodyUsed(response);
  response[serveFastConsumedKey] = true;
  const out = toInnerResponse(response);
  if (out.body !== null) isReadableStream(out.body.streamOrStatic);
  // As `sendInner` reads one of bytes with headers (a value to trim).
  const built = new Response(new ArrayBuffer(4), {
    status: 201,
    headers: { "content-type": "application/octet-stream", "x-warm": " 1 " },
  });
  responseBodyUsed(built);
  const builtOut = toInnerResponse(built);
  // As `respond` ends an invocation.
  inv.responded = true;
  inv.pending = 0;
  body.release();
  // A body as handlers check it before reading (reading a resource calls ops).
  const unread = new RequestBody(0);
  unread.unusable();
  unread.consumed();
  warmKept = [
    got, inner, request, url, invGot, inv, ctx, read, response, out, built, builtOut, unread,
  ];
}
let warmKept = null;

// -------------------------------------------------------------- lifecycle --
/**
 * Called once before the worker's main module is evaluated (and once in a
 * blank isolate of the stock, with no worker). What belongs to the isolate
 * (the clock's buffer, the ops' bindings) is set up at its first call only,
 * so a worker loaded into a ready isolate runs only its own part on its
 * first request's path.
 */
const init = (function init() {
  performanceMod.setTimeOrigin();
  // The isolate's part has not run while `invocations`, set only there, is null.
  if (invocations === null) {
    // The ops again, with their fast API forms: the snapshot's functions,
    // bound when it was built and the isolate's own until now, have only
    // the slow form (V8 cannot serialize fast API functions); deno_core
    // puts the fast ones in `core.ops` as the isolate loads its first
    // residual script, which is what 90_fast_ops.js is for. Before any
    // request: a call site that has seen an op's slow form stays
    // polymorphic, and V8 makes no fast call there.
    core.loadExtScript("ext:isola_worker/90_fast_ops.js");
    bindOps();
    bindGlobalScopeOps();
    const clock = new Float64Array(2);
    op_isola_set_clock(new Uint8Array(TypedArrayPrototypeGetBuffer(clock)));
    setClock(clock);
    invocations = op_isola_invocations();
  }
  env = op_isola_env();
  const bindings = op_isola_service_bindings();
  for (let i = 0; i < bindings.length; i++) {
    env[bindings[i]] = serviceStub(bindings[i]);
  }
  addKvBindings(env);
  addQueueBindings(env);
});

/**
 * Called with the main module's namespace once it has been evaluated.
 * Returns an error message, or null when the worker has a fetch handler.
 */
const setEntry = (function setEntry(namespace) {
  exports = namespace;
  const def = namespace.default;
  if (
    def !== null && typeof def === "object" &&
    (typeof def.fetch === "function" || typeof def.scheduled === "function" ||
      typeof def.queue === "function")
  ) {
    entry = def;
    return null;
  }
  if (typeof def === "function" && isEntrypointClass(def)) {
    entryClass = def;
    return null;
  }
  if (
    event.listenerCount(globalEvents, "fetch") > 0 ||
    event.listenerCount(globalEvents, "scheduled") > 0
  ) {
    entry = null;
    // Service-worker syntax has no `env` argument: bindings are globals.
    const names = ObjectKeys(env);
    for (let i = 0; i < names.length; i++) {
      if (!ObjectHasOwn(globalThis, names[i])) {
        ObjectDefineProperty(globalThis, names[i], {
          value: env[names[i]],
          writable: true,
          enumerable: false,
          configurable: true,
        });
      }
    }
    return null;
  }
  // An RPC-only service: named WorkerEntrypoint classes and nothing else.
  const names = ObjectKeys(namespace);
  for (let i = 0; i < names.length; i++) {
    if (names[i] !== "default" && isEntrypointClass(namespace[names[i]])) {
      return null;
    }
  }
  return "the main module has no fetch handler: add `export default { async fetch(request, env, ctx) { ... } }` or call `addEventListener(\"fetch\", (event) => event.respondWith(...))`";
});

/** A class with methods (`class extends WorkerEntrypoint { ... }`). */
function isEntrypointClass(value) {
  if (typeof value !== "function" || value.prototype === undefined) return false;
  return ObjectGetOwnPropertyNames(value.prototype).length > 1 ||
    ObjectGetPrototypeOf(value.prototype) !== ObjectPrototype;
}

core.setUnhandledPromiseRejectionHandler((_promise, reason) => {
  console.error(`Uncaught (in promise) ${describe(reason)}`);
  return true;
});
core.setReportExceptionCallback((err) => {
  console.error(describe(err));
});
// An exception in a listener, or `reportError(e)`, is logged; the isolate
// keeps serving (deno_web would otherwise treat it as fatal).
globalEvents.addEventListener("error", (ev) => {
  console.error(describe(ev.error));
  ev.preventDefault();
});

const workerInternals = ObjectFreeze({
  call,
  dispatch,
  dispatchAll,
  init,
  queue,
  scheduled,
  setEntry,
  warm,
});
export { workerInternals };
