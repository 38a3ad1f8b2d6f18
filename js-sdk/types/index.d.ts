// Types for Isola workers (Cloudflare-Workers-style handlers).
// The Web APIs (Request, Response, fetch, crypto, ...) come from TypeScript's
// lib: ["ES2022", "WebWorker"]; these are the worker-specific declarations.

declare global {
  /** What a handler gets as its third argument. */
  interface ExecutionContext {
    /** Keeps the invocation alive until `promise` settles (within the wall-clock limit). */
    waitUntil(promise: Promise<unknown>): void;
    /** On an exception, pass the request on to the origin instead of failing. */
    passThroughOnException(): void;
  }

  /** What a `scheduled` (cron) handler gets. */
  interface ScheduledController {
    /** When the run was due, in milliseconds since the epoch. */
    readonly scheduledTime: number;
    /** The expression that fired, as written in `triggers.crons`. */
    readonly cron: string;
    readonly type: "scheduled";
    /** Do not retry this run if it fails. */
    noRetry(): void;
  }

  /** A service binding (`services = [{ binding, service }]`) or any object with `fetch`. */
  interface Fetcher {
    fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  }

  /** A method of an RPC target as the caller sees it: always async. */
  type RpcMethod<F> = F extends (...args: infer A) => infer R ? (...args: A) => Promise<Awaited<R>> : never;

  /**
   * The public methods of `T` (a `WorkerEntrypoint` class or its instance) as RPC calls;
   * `fetch` keeps the Fetcher's signature.
   */
  type Rpc<T> = {
    [K in keyof T as K extends "fetch" | "constructor" | "env" | "ctx" ? never : T[K] extends (...args: never[]) => unknown ? K : never]: RpcMethod<T[K]>;
  };

  /**
   * A service binding typed by the callee: `Service<typeof import("../other/src").MyEntrypoint>`
   * or `Service<MyEntrypoint>`; `Service` alone is a plain Fetcher.
   */
  type Service<T = undefined> = Fetcher &
    (T extends undefined ? unknown : T extends abstract new (...args: never[]) => infer I ? Rpc<I> : Rpc<T>);

  /** A queue producer binding (`queues.producers`): `send` resolves once the message is stored. */
  interface Queue<Body = unknown> {
    send(body: Body, options?: { contentType?: "json" | "text" | "bytes" | "v8"; delaySeconds?: number }): Promise<void>;
    sendBatch(
      messages: Iterable<{ body: Body; contentType?: "json" | "text" | "bytes" | "v8"; delaySeconds?: number }>,
      options?: { delaySeconds?: number },
    ): Promise<void>;
  }

  interface KVNamespaceListKey<Metadata = unknown> {
    name: string;
    expiration?: number;
    metadata?: Metadata;
  }

  interface KVNamespaceListResult<Metadata = unknown> {
    keys: KVNamespaceListKey<Metadata>[];
    list_complete: boolean;
    cursor?: string;
  }

  interface KVNamespacePutOptions {
    expiration?: number;
    expirationTtl?: number;
    metadata?: unknown;
  }

  /** A KV namespace binding (`kv_namespaces`), Workers KV's shape. */
  interface KVNamespace<Key extends string = string> {
    get(key: Key, type?: "text"): Promise<string | null>;
    get<T = unknown>(key: Key, type: "json"): Promise<T | null>;
    get(key: Key, type: "arrayBuffer"): Promise<ArrayBuffer | null>;
    get(key: Key, type: "stream"): Promise<ReadableStream | null>;
    put(key: Key, value: string | ArrayBuffer | ArrayBufferView | ReadableStream, options?: KVNamespacePutOptions): Promise<void>;
    delete(key: Key): Promise<void>;
    list<Metadata = unknown>(options?: { prefix?: string; limit?: number; cursor?: string }): Promise<KVNamespaceListResult<Metadata>>;
  }

  interface Message<Body = unknown> {
    readonly id: string;
    readonly timestamp: Date;
    readonly body: Body;
    readonly attempts: number;
    ack(): void;
    retry(options?: { delaySeconds?: number }): void;
  }

  /** A batch for a `queue` handler (`queues.consumers`). */
  interface MessageBatch<Body = unknown> {
    readonly queue: string;
    readonly messages: readonly Message<Body>[];
    ackAll(): void;
    retryAll(options?: { delaySeconds?: number }): void;
  }

  /** `export default { fetch, scheduled, queue } satisfies ExportedHandler<Env>`. */
  interface ExportedHandler<Env = unknown, QueueBody = unknown> {
    fetch?(request: Request, env: Env, ctx: ExecutionContext): Response | Promise<Response>;
    scheduled?(controller: ScheduledController, env: Env, ctx: ExecutionContext): void | Promise<void>;
    queue?(batch: MessageBatch<QueueBody>, env: Env, ctx: ExecutionContext): void | Promise<void>;
  }

  /** Text modules (.txt, .html) import as strings. */
}

declare module "*.txt" {
  const text: string;
  export default text;
}
declare module "*.html" {
  const text: string;
  export default text;
}
declare module "*.bin" {
  const data: ArrayBuffer;
  export default data;
}
declare module "*.wasm" {
  const module: WebAssembly.Module;
  export default module;
}

export {};
