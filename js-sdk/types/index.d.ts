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
    readonly scheduledTime: number;
    readonly cron: string;
    noRetry(): void;
  }

  /** A service binding or any object with `fetch`. */
  interface Fetcher {
    fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
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

  /** Workers KV's shape (the Isola server does not provide KV bindings yet). */
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

  /** A batch for a `queue` handler (queues are not run by the Isola server yet). */
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
