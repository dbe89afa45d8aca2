// Types of genjobs.js, the browser client of the genjobs API.

export type JobStatus = "queued" | "processing" | "succeeded" | "failed" | "cancelled";

/** The job view the API answers with. */
export interface Job<Result = unknown, Input = unknown> {
  id: string;
  task: string;
  status: JobStatus;
  input: Input;
  metadata?: Record<string, unknown> | null;
  result: Result | null;
  error: { code: string; message: string } | null;
  usage: { model: string; prompt_tokens: number; completion_tokens: number } | null;
  attempts: number;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

/** Text appended by the running attempt. */
export interface DeltaEvent {
  attempt: number;
  seq: number;
  text: string;
}

/** A new attempt starts: drop the partial text. */
export interface ResetEvent {
  attempt: number;
}

/** Any event of the stream, its data parsed as JSON when it is JSON. */
export interface StreamEvent {
  event: string;
  id: string;
  data: unknown;
}

export interface FollowHandlers {
  /** The job's status changed. */
  onStatus?(data: unknown): void;
  /** New text; `text` is the whole text of the running attempt so far. */
  onDelta?(delta: DeltaEvent, text: string): void;
  /** A retry started: clear what onDelta showed. */
  onReset?(reset: ResetEvent): void;
  onUsage?(usage: unknown): void;
  /** Every event, including the terminal one and any this client does not know. */
  onEvent?(event: StreamEvent): void;
}

export interface GenerateHandlers extends FollowHandlers {
  /** The job was accepted (its id is known from here on, e.g. to cancel it). */
  onSubmit?(job: Job): void;
}

export interface ClientOptions {
  /** The API origin, e.g. "https://api.example.com" (no /v1). */
  baseUrl: string;
  /**
   * The Supabase access token, asked for before every request, e.g.
   * `async () => (await supabase.auth.getSession()).data.session?.access_token`.
   */
  getToken: () => Promise<string | null | undefined> | string | null | undefined;
  /** Defaults to globalThis.fetch. */
  fetch?: typeof fetch;
  /** Retries of a request answered 429/503 (after Retry-After) or lost on the way. Default 4. */
  maxRetries?: number;
  /** Reconnects in a row without a new event before follow() gives up. Default 8. */
  maxReconnects?: number;
  /** Exponential backoff with jitter when no Retry-After says how long. Default 500 ms to 15 s. */
  backoff?: { baseMs: number; maxMs: number };
  /** An event stream silent this long (not even a heartbeat) is reconnected. Default 45 s. */
  idleTimeoutMs?: number;
}

export interface SubmitOptions {
  metadata?: Record<string, unknown>;
  /** Defaults to a fresh UUID per submit() call, so its own retries never create two jobs. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export interface FollowOptions {
  signal?: AbortSignal;
  /** Resume after this event id (e.g. one kept from onEvent before a page reload). */
  lastEventId?: string;
}

export interface GenJobsClient {
  /** POST /v1/generations: the accepted job (202, or 200 when an idempotent replay). */
  submit<Input = unknown>(task: string, input: Input, options?: SubmitOptions): Promise<Job>;
  /** GET /v1/generations/{id}. */
  get(id: string, options?: { signal?: AbortSignal }): Promise<Job>;
  /** POST /v1/generations/{id}/cancel; a GenJobsError with status 409 once the job has ended. */
  cancel(id: string, options?: { signal?: AbortSignal }): Promise<Job>;
  /** Follow the job's events (resuming after drops) → the job view of its terminal event. */
  follow(id: string, handlers?: FollowHandlers, options?: FollowOptions): Promise<Job>;
  /** submit() then follow(): resolves with the final job (succeeded, failed or cancelled). */
  generate<Input = unknown>(
    task: string,
    input: Input,
    handlers?: GenerateHandlers,
    options?: SubmitOptions,
  ): Promise<Job>;
}

export function createClient(options: ClientOptions): GenJobsClient;

/** An API error (problem+json, RFC 9457); status 0 for a network or stream failure. */
export class GenJobsError extends Error {
  constructor(fields: {
    status: number;
    type?: string;
    title?: string;
    detail?: string;
    errors?: Array<{ field: string; message: string }>;
    retryAfterMs?: number | null;
    body?: unknown;
  });
  status: number;
  type: string;
  title: string;
  detail: string;
  /** Per-field validation errors (422). */
  errors: Array<{ field: string; message: string }>;
  /** What Retry-After asked for, in milliseconds. */
  retryAfterMs: number | null;
  /** The parsed response body (or its text). */
  body: unknown;
}

/** Incremental Server-Sent Events parser (exported for tests and other streams). */
export class SSEParser {
  constructor(
    onEvent: (event: { event: string; id: string; data: string }) => void,
    onComment?: (comment: string) => void,
  );
  lastEventId: string;
  retryMs: number | null;
  resumeFrom(lastEventId: string): this;
  push(chunk: Uint8Array | string): void;
  end(): void;
}

/** Milliseconds a Retry-After header value asks for, or null. */
export function parseRetryAfter(value: string | null | undefined, now?: number): number | null;
