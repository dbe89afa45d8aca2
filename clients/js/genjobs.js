// genjobs browser client: submit a generation, follow its events, get the final job.
// One dependency-free ES module (fetch, ReadableStream, TextDecoder, AbortController).
// Types: genjobs.d.ts beside this file (the JSDoc below refers to it; `tsc -p .` checks both).

/** @typedef {import("./genjobs.js").ClientOptions} ClientOptions */
/** @typedef {import("./genjobs.js").GenJobsClient} GenJobsClient */
/** @typedef {import("./genjobs.js").GenerateHandlers} Handlers */
/** @typedef {import("./genjobs.js").Job} Job */
/** @typedef {{event: string, id: string, data: string}} RawEvent */
/**
 * @typedef {{lastEventId: string, attempt: number | null, seq: number | null, text: string}}
 *   FollowState
 */
/**
 * @typedef {object} ErrorFields
 * @property {number} status
 * @property {string} [type]
 * @property {string} [title]
 * @property {string} [detail]
 * @property {Array<{field: string, message: string}>} [errors]
 * @property {number | null} [retryAfterMs]
 * @property {unknown} [body]
 */

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const RETRYABLE_STATUS = new Set([429, 503]);

/** An API error: problem+json fields (RFC 9457), or a network/protocol failure (status 0). */
export class GenJobsError extends Error {
  /** @param {ErrorFields} fields */
  constructor({ status, type, title, detail, errors, retryAfterMs, body }) {
    super(detail || title || `HTTP ${status}`);
    this.name = "GenJobsError";
    this.status = status;
    this.type = type || "about:blank";
    this.title = title || "";
    this.detail = detail || "";
    this.errors = Array.isArray(errors) ? errors : [];
    this.retryAfterMs = retryAfterMs ?? null;
    this.body = body;
  }
}

/** Incremental Server-Sent Events parser (WHATWG rules: CR, LF or CRLF; comments; id; retry). */
export class SSEParser {
  /**
   * @param {(event: RawEvent) => void} onEvent
   * @param {(comment: string) => void} [onComment]
   */
  constructor(onEvent, onComment = () => {}) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.lastEventId = ""; // set when an event is dispatched, as a reconnect must send it
    /** @type {number | null} */
    this.retryMs = null;
    this._idBuffer = "";
    this._decoder = new TextDecoder();
    this._buffer = "";
    /** @type {string[]} */
    this._data = [];
    this._afterCR = false; // a CR ended the previous chunk: a leading LF belongs to it
    this._event = "";
    this._started = false;
  }

  /**
   * Start from an earlier stream's last event id (a resumed stream keeps it).
   * @param {string} lastEventId
   */
  resumeFrom(lastEventId) {
    this.lastEventId = this._idBuffer = lastEventId;
    return this;
  }

  /** Feed bytes or text. @param {Uint8Array | string} chunk */
  push(chunk) {
    let text = typeof chunk === "string" ? chunk : this._decoder.decode(chunk, { stream: true });
    if (!this._started && text.length > 0) {
      this._started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this._afterCR && text.startsWith("\n")) text = text.slice(1);
    this._afterCR = text.endsWith("\r");
    this._buffer += text;
    const lines = this._buffer.split(/\r\n|\r|\n/);
    this._buffer = lines.pop() ?? "";
    for (const line of lines) this._line(line);
  }

  /** The stream ended: an event without its blank line is dropped, as the spec says. */
  end() {
    this._buffer = "";
    this._event = "";
    this._data = [];
  }

  /** @param {string} line */
  _line(line) {
    if (line === "") return this._dispatch();
    if (line.startsWith(":")) return this.onComment(line.slice(1).trimStart());
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this._event = value;
    else if (field === "data") this._data.push(value);
    else if (field === "id" && !value.includes("\0")) this._idBuffer = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value);
  }

  _dispatch() {
    this.lastEventId = this._idBuffer;
    const event = this._event || "message";
    const data = this._data;
    this._event = "";
    this._data = [];
    if (data.length === 0) return;
    this.onEvent({ event, id: this.lastEventId, data: data.join("\n") });
  }
}

/**
 * Milliseconds a Retry-After header asks for (seconds or an HTTP date), or null.
 * @param {string | null | undefined} value
 * @returns {number | null}
 */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null || value === "") return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** @param {number} ms @param {AbortSignal} [signal] @returns {Promise<void>} */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const done = () => {
      signal?.removeEventListener("abort", stop);
      resolve();
    };
    const timer = setTimeout(done, ms);
    const stop = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", stop, { once: true });
  });
}

/** @param {number} failures @param {number} baseMs @param {number} maxMs */
function backoffMs(failures, baseMs, maxMs) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** failures);
  return ceiling / 2 + Math.random() * (ceiling / 2); // half fixed, half jitter
}

/** @param {string} data @returns {any} JSON data as the API sends it, else the text */
function parseData(data) {
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

/** @param {Response} response */
async function errorFrom(response) {
  const text = await response.text().catch(() => "");
  const retryAfterMs = parseRetryAfter(response.headers.get("retry-after"));
  /** @type {unknown} */
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON (a proxy's HTML page, say): the text is the detail
  }
  if (body && typeof body === "object" && !Array.isArray(body)) {
    const problem = /** @type {Record<string, unknown>} */ (body);
    /** @param {unknown} value */
    const asString = (value) => (typeof value === "string" ? value : undefined);
    return new GenJobsError({
      status: response.status,
      type: asString(problem.type),
      title: asString(problem.title),
      detail: asString(problem.detail),
      errors: Array.isArray(problem.errors) ? problem.errors : [],
      retryAfterMs,
      body,
    });
  }
  const detail = text.slice(0, 200) || response.statusText;
  return new GenJobsError({ status: response.status, detail, retryAfterMs, body });
}

/** An AbortController that also aborts with `signal`. @param {AbortSignal} [signal] */
function linkedController(signal) {
  const controller = new AbortController();
  const forward = () => controller.abort(signal?.reason);
  if (signal?.aborted) forward();
  else signal?.addEventListener("abort", forward, { once: true });
  return { controller, release: () => signal?.removeEventListener("abort", forward) };
}

/**
 * A client for the genjobs API.
 * @param {ClientOptions} options
 * @returns {GenJobsClient}
 */
export function createClient({
  baseUrl,
  getToken,
  fetch: fetchImpl = globalThis.fetch.bind(globalThis),
  maxRetries = 4,
  maxReconnects = 8,
  backoff = { baseMs: 500, maxMs: 15000 },
  idleTimeoutMs = 45000,
}) {
  if (!baseUrl) throw new TypeError("createClient: baseUrl is required");
  if (typeof getToken !== "function") throw new TypeError("createClient: getToken is required");
  const root = baseUrl.replace(/\/+$/, "");

  /** @param {Record<string, string>} extra @returns {Promise<Record<string, string>>} */
  async function headers(extra) {
    const token = await getToken();
    return { ...(token ? { Authorization: `Bearer ${token}` } : {}), ...extra };
  }

  // One request; 429/503 (and network errors when `retryNetwork`) are retried with Retry-After.
  /**
   * @param {string} method
   * @param {string} path
   * @param {{body?: unknown, extraHeaders?: Record<string, string>, signal?: AbortSignal,
   *   retryNetwork?: boolean}} [options]
   * @returns {Promise<any>}
   */
  async function request(method, path, { body, extraHeaders, signal, retryNetwork = false } = {}) {
    for (let attempt = 0; ; attempt++) {
      const sent = await headers({
        Accept: "application/json, application/problem+json",
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
        ...extraHeaders,
      });
      let response;
      try {
        response = await fetchImpl(root + path, {
          method,
          headers: sent,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal,
        });
      } catch (error) {
        if (signal?.aborted) throw error;
        if (!retryNetwork || attempt >= maxRetries) throw networkError(String(error), error);
        await sleep(backoffMs(attempt, backoff.baseMs, backoff.maxMs), signal);
        continue;
      }
      if (response.ok) return response.status === 204 ? null : response.json();
      const error = await errorFrom(response);
      if (!RETRYABLE_STATUS.has(response.status) || attempt >= maxRetries) throw error;
      const wait = error.retryAfterMs ?? backoffMs(attempt, backoff.baseMs, backoff.maxMs);
      await sleep(wait, signal);
    }
  }

  /** @type {GenJobsClient["submit"]} POST /v1/generations → the job view. */
  function submit(task, input, { metadata, idempotencyKey, signal } = {}) {
    // A key of our own makes retrying after a lost answer safe: the server replays the job.
    const key = idempotencyKey ?? randomKey();
    const body = metadata === undefined ? { task, input } : { task, input, metadata };
    return request("POST", "/v1/generations", {
      body,
      extraHeaders: { "Idempotency-Key": key },
      signal,
      retryNetwork: true,
    });
  }

  /** @type {GenJobsClient["get"]} GET /v1/generations/{id} → the job view. */
  function get(id, { signal } = {}) {
    return request("GET", `/v1/generations/${encodeURIComponent(id)}`, {
      signal,
      retryNetwork: true,
    });
  }

  /** @type {GenJobsClient["cancel"]} POST …/cancel → the job view (409 once it has ended). */
  function cancel(id, { signal } = {}) {
    return request("POST", `/v1/generations/${encodeURIComponent(id)}/cancel`, { signal });
  }

  /** @type {GenJobsClient["follow"]} Follow a job's events to the terminal one → its job. */
  async function follow(id, handlers = {}, { signal, lastEventId } = {}) {
    /** @type {FollowState} */
    const state = { lastEventId: lastEventId ?? "", attempt: null, seq: null, text: "" };
    const path = `/v1/generations/${encodeURIComponent(id)}/events`;
    let failures = 0;
    let retryMs = backoff.baseMs;
    for (;;) {
      signal?.throwIfAborted();
      const outcome = await connect(path, handlers, state, signal);
      if (outcome.job !== undefined) return outcome.job;
      if (outcome.retryMs != null) retryMs = outcome.retryMs;
      if (outcome.progressed) failures = 0;
      if (outcome.error && failures >= maxReconnects) throw outcome.error;
      const wait = outcome.retryAfterMs ?? backoffMs(failures, retryMs, backoff.maxMs);
      failures += 1;
      await sleep(wait, signal);
    }
  }

  // One connection to the event stream: {job} at the terminal event, else why it stopped.
  /**
   * @param {string} path
   * @param {Handlers} handlers
   * @param {FollowState} state
   * @param {AbortSignal} [signal]
   * @returns {Promise<{job?: Job, error?: GenJobsError, progressed?: boolean,
   *   retryMs?: number | null, retryAfterMs?: number | null}>}
   */
  async function connect(path, handlers, state, signal) {
    /** @type {Record<string, string>} */
    const extra = { Accept: "text/event-stream" }; // safelisted: CORS needs only Last-Event-ID
    if (state.lastEventId) extra["Last-Event-ID"] = state.lastEventId;
    const sent = await headers(extra);
    const { controller, release } = linkedController(signal);
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let idle;
    const touch = () => {
      clearTimeout(idle);
      idle = setTimeout(() => controller.abort(new Error("event stream idle")), idleTimeoutMs);
    };
    let progressed = false;
    // What the events said: the terminal job, or a handler's own exception (it ends follow();
    // it is no network error to reconnect after).
    /** @type {{job?: Job, handlerError?: {error: unknown}}} */
    const seen = {};
    const parser = new SSEParser((event) => {
      progressed = true;
      if (seen.job !== undefined || seen.handlerError) return;
      try {
        seen.job = dispatch(event, handlers, state);
      } catch (error) {
        seen.handlerError = { error };
      }
    }).resumeFrom(state.lastEventId);
    try {
      touch();
      // cache "no-store": the browser adds Cache-Control itself, no preflight header needed.
      const response = await fetchImpl(root + path, {
        headers: sent,
        cache: "no-store",
        signal: controller.signal,
      });
      if (!response.ok) {
        const error = await errorFrom(response);
        if (!RETRYABLE_STATUS.has(response.status)) throw error;
        return { error, retryAfterMs: error.retryAfterMs };
      }
      if (!response.body) throw networkError("event stream without a body");
      const reader = response.body.getReader();
      try {
        while (seen.job === undefined && !seen.handlerError) {
          const { value, done } = await reader.read();
          if (done) break;
          touch();
          parser.push(value);
        }
      } finally {
        if (seen.job !== undefined || seen.handlerError) await reader.cancel().catch(() => {});
        reader.releaseLock();
      }
      if (seen.handlerError) throw seen.handlerError.error;
      parser.end();
      if (seen.job !== undefined) return { job: seen.job };
      // A clean end before the terminal event (a proxy or the server's stream limit): resume.
      return { progressed, retryMs: parser.retryMs, error: networkError("event stream ended") };
    } catch (error) {
      if (seen.handlerError) throw seen.handlerError.error;
      if (signal?.aborted) throw signal.reason;
      if (error instanceof GenJobsError && error.status !== 0) throw error;
      if (seen.job !== undefined) return { job: seen.job };
      return { progressed, retryMs: parser.retryMs, error: networkError(String(error), error) };
    } finally {
      clearTimeout(idle);
      release();
      controller.abort(); // frees the connection whatever happened; a no-op once it is done
      if (parser.lastEventId) state.lastEventId = parser.lastEventId;
    }
  }

  /** @type {GenJobsClient["generate"]} Submit, then follow: resolves with the final job. */
  async function generate(task, input, handlers = {}, options = {}) {
    const job = await submit(task, input, options);
    handlers.onSubmit?.(job);
    if (TERMINAL.has(job.status)) return job;
    return follow(job.id, handlers, { signal: options.signal });
  }

  return { submit, get, cancel, follow, generate };
}

/** A UUID v4; randomUUID() exists only in secure contexts (https, localhost). */
function randomKey() {
  if (typeof globalThis.crypto.randomUUID === "function") return globalThis.crypto.randomUUID();
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return [
    hex.slice(0, 8),
    hex.slice(8, 12),
    hex.slice(12, 16),
    hex.slice(16, 20),
    hex.slice(20),
  ].join("-");
}

/** @param {string} detail @param {unknown} [cause] */
function networkError(detail, cause) {
  const error = new GenJobsError({ status: 0, type: "network", detail });
  if (cause) error.cause = cause;
  return error;
}

/**
 * One event to the handlers; returns the job view when the event is terminal.
 * @param {RawEvent} event
 * @param {Handlers} handlers
 * @param {FollowState} state
 * @returns {Job | undefined}
 */
function dispatch(event, handlers, state) {
  const data = parseData(event.data);
  handlers.onEvent?.({ event: event.event, id: event.id, data });
  switch (event.event) {
    case "status":
      handlers.onStatus?.(data);
      break;
    case "reset":
      state.attempt = data.attempt;
      state.seq = null;
      state.text = "";
      handlers.onReset?.(data);
      break;
    case "delta":
      if (data.attempt !== state.attempt) {
        state.attempt = data.attempt; // a new attempt's first delta: its text starts afresh
        state.seq = null;
        state.text = "";
      }
      if (state.seq !== null && data.seq <= state.seq) break; // already seen
      state.seq = data.seq;
      state.text += data.text;
      handlers.onDelta?.(data, state.text);
      break;
    case "usage":
      handlers.onUsage?.(data);
      break;
    default:
      if (TERMINAL.has(event.event)) return data;
  }
  return undefined;
}
