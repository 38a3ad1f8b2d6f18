// The dispatcher: turns a request from Rust into a JS `Request`, calls the
// worker's handler, and hands the `Response` back to Rust without
// re-serialising it.
import { core, primordials } from "ext:core/mod.js";
import {
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

const {
  ArrayPrototypePush,
  Error,
  ObjectDefineProperty,
  ObjectFreeze,
  ObjectPrototypeIsPrototypeOf,
  PromisePrototypeThen,
  PromiseResolve,
  ReflectApply,
  SafePromiseAllSettled,
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
} = primordials;
const {
  op_isola_set_clock,
  op_isola_env,
  op_isola_fail,
  op_isola_invocation_done,
  op_isola_respond,
} = core.ops;
const { fromInnerRequest, newInnerRequest } = requestMod;
const { ResponsePrototype, toInnerResponse } = responseMod;
const { readableStreamForRid, resourceForReadableStream, isReadableStream } =
  streams;
const { InnerBody } = core.loadExtScript("ext:deno_fetch/22_body.js");

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
        console.error(`ctx.waitUntil() promise rejected: ${describe(err)}`);
        settle(inv);
      },
    );
  }
  passThroughOnException() {
    this.#invocation.passThrough = true;
  }
}

function settle(inv) {
  inv.pending--;
  if (inv.pending === 0 && inv.responded) {
    op_isola_invocation_done(inv.id);
  }
}

// -------------------------------------------------------------- dispatch --
function headerList(flat) {
  const list = [];
  for (let i = 0; i < flat.length; i += 2) {
    ArrayPrototypePush(list, [flat[i], flat[i + 1]]);
  }
  return list;
}

/**
 * Called from Rust for every request.
 * @param {number} id invocation id
 * @param {string} method
 * @param {string} url absolute URL
 * @param {string[]} headers flat name/value list
 * @param {number | null} bodyRid resource id of the request body stream
 */
function dispatch(id, method, url, headers, bodyRid) {
  const body = bodyRid === null
    ? null
    : new InnerBody(readableStreamForRid(bodyRid));
  const inner = newInnerRequest(method, url, () => headerList(headers), body);
  const request = fromInnerRequest(inner, "immutable");
  const inv = { id, pending: 1, responded: false, passThrough: false };
  const ctx = new ExecutionContext(inv);

  const prevContext = core.getAsyncContext();
  core.setAsyncContext(id);
  let result;
  try {
    if (entryClass !== null) {
      const instance = new entryClass(ctx, env);
      result = instance.fetch(request);
    } else if (entry !== null) {
      result = ReflectApply(entry.fetch, entry, [request, env, ctx]);
    } else {
      result = dispatchFetchEvent(request, ctx);
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
    PromisePrototypeThen(
      PromiseResolve(result),
      (response) => respond(inv, response),
      (err) => fail(inv, err),
    );
  }
}

function dispatchFetchEvent(request, ctx) {
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

function respond(inv, response) {
  try {
    if (!ObjectPrototypeIsPrototypeOf(ResponsePrototype, response)) {
      throw new TypeError(
        `The handler returned ${describeValue(response)}, not a Response`,
      );
    }
    const inner = toInnerResponse(response);
    if (inner === undefined) {
      throw new TypeError("The handler returned an object that is not a Response made by `new Response()`");
    }
    const list = inner.headerList;
    const flat = [];
    for (let i = 0; i < list.length; i++) {
      ArrayPrototypePush(flat, list[i][0], list[i][1]);
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
    op_isola_respond(inv.id, inner.status, flat, body);
  } catch (err) {
    fail(inv, err);
    return;
  }
  done(inv);
}

function fail(inv, err) {
  let message = describe(err);
  if (inv.passThrough) {
    message +=
      "\n(passThroughOnException() was called, but this node has no origin to pass the request to)";
  }
  op_isola_fail(inv.id, message);
  done(inv);
}

function done(inv) {
  if (inv.responded) return;
  inv.responded = true;
  settle(inv);
}

function describeValue(v) {
  if (v === null) return "null";
  if (v === undefined) return "undefined";
  if (typeof v === "object") {
    return TypedArrayPrototypeGetSymbolToStringTag(v) ?? "an object";
  }
  return `a ${typeof v}`;
}

// -------------------------------------------------------------- lifecycle --
/** Called once before the worker's main module is evaluated. */
function init() {
  performanceMod.setTimeOrigin();
  const clock = new Float64Array(2);
  op_isola_set_clock(new Uint8Array(TypedArrayPrototypeGetBuffer(clock)));
  setClock(clock);
  env = op_isola_env();
}

/**
 * Called with the main module's namespace once it has been evaluated.
 * Returns an error message, or null when the worker has a fetch handler.
 */
function setEntry(namespace) {
  const def = namespace.default;
  if (def !== null && typeof def === "object" && typeof def.fetch === "function") {
    entry = def;
    return null;
  }
  if (typeof def === "function" && typeof def.prototype?.fetch === "function") {
    entryClass = def;
    return null;
  }
  if (event.listenerCount(globalEvents, "fetch") > 0) {
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
  return "the main module has no fetch handler: add `export default { async fetch(request, env, ctx) { ... } }` or call `addEventListener(\"fetch\", (event) => event.respondWith(...))`";
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

const workerInternals = ObjectFreeze({ dispatch, init, setEntry });
export { workerInternals };
