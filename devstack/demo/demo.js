// The demo page: pick a task, submit it, follow its events as the text streams in.
// Plain ES module on the real browser client (served as /genjobs.js from clients/js/).
import { createClient, GenJobsError } from "/genjobs.js";

const SAMPLE_TEXT =
  "Pub/Sub pushes each job to the worker, which streams the model's answer into the " +
  "database; the api turns it into Server-Sent Events that this page follows.";
const DIRECTIVE = /\s*\bstub:\S+/g;
const RUN_TAG = /\s*\[run [0-9a-f]+\]/g;
const TOKEN_REFRESH_MS = 30 * 60 * 1000; // the local token lives an hour

const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const ui = {
  form: $("job-form"),
  task: $("task"),
  taskDescription: $("task-description"),
  input: $("input"),
  inputLabel: $("input-label"),
  submit: $("submit"),
  cancel: $("cancel"),
  apiUrl: $("api-url"),
  status: $("status"),
  attempt: $("attempt"),
  jobId: $("job-id"),
  note: $("note"),
  output: $("output"),
  usage: $("usage"),
  error: $("error"),
};

/** @type {{token: string, at: number} | null} */
let cachedToken = null;
/** @type {Map<string, any>} */
const tasks = new Map();
/** @type {{id: string | null, abort: AbortController} | null} */
let running = null;

async function loadConfig() {
  const response = await fetch("/config.json", { cache: "no-store" });
  if (!response.ok) throw new Error(`/config.json answered ${response.status}`);
  return response.json();
}

async function getToken() {
  if (!cachedToken || Date.now() - cachedToken.at > TOKEN_REFRESH_MS) {
    cachedToken = { token: (await loadConfig()).token, at: Date.now() };
  }
  return cachedToken.token;
}

/** How a task takes its input, from its JSON Schema: a text, or a chat's messages. */
function inputKind(/** @type {any} */ task) {
  const properties = task.input_schema?.properties ?? {};
  return "messages" in properties ? "chat" : "text";
}

function buildInput(/** @type {any} */ task, /** @type {string} */ value) {
  return inputKind(task) === "chat"
    ? { messages: [{ role: "user", content: value }] }
    : { text: value };
}

function showTask() {
  const task = tasks.get(ui.task.value);
  if (!task) return;
  // Descriptions mark names with backticks, as Markdown does: show those as code.
  ui.taskDescription.replaceChildren(
    ...String(task.description)
      .split("`")
      .map((part, i) => (i % 2 ? Object.assign(document.createElement("code"), { textContent: part }) : part)),
  );
  ui.inputLabel.textContent = inputKind(task) === "chat" ? "Your message" : "Text";
}

function setStatus(/** @type {string} */ status) {
  ui.status.textContent = status;
  ui.status.dataset.status = status;
}

function setError(/** @type {string} */ message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function describe(/** @type {unknown} */ error) {
  if (error instanceof GenJobsError) {
    const fields = error.errors.map((e) => `${e.field}: ${e.message}`).join("; ");
    return [error.title || `HTTP ${error.status}`, error.detail, fields].filter(Boolean).join(" — ");
  }
  return error instanceof Error ? error.message : String(error);
}

function showUsage(/** @type {any} */ usage) {
  if (!usage) return;
  ui.usage.textContent =
    `Usage: ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` +
    (usage.model ? ` (${usage.model})` : "");
  ui.usage.hidden = false;
}

function showNote(/** @type {string} */ message) {
  ui.note.textContent = message;
  ui.note.hidden = false;
}

/** A cancelled job's usage is written when the worker stops the model, just after the end. */
async function billedUsage(/** @type {any} */ job) {
  if (job.status !== "cancelled") return null;
  for (let i = 0; i < 6; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    const latest = await client.get(job.id);
    if (latest.usage) return latest.usage;
  }
  return null;
}

function startRun() {
  running = { id: null, abort: new AbortController() };
  ui.output.textContent = "";
  ui.note.hidden = true;
  ui.usage.hidden = true;
  ui.jobId.textContent = "–";
  ui.attempt.textContent = "–";
  setError("");
  setStatus("submitting");
  ui.submit.disabled = true;
  return running;
}

function endRun() {
  running = null;
  ui.submit.disabled = false;
  ui.cancel.disabled = true;
}

/** The stub cuts only the first answer to each exact prompt: a fresh tag makes each run cut. */
function freshCutPrompt() {
  if (!/\bstub:cut=/.test(ui.input.value)) return;
  const tag = Math.floor(Math.random() * 0xffffff).toString(16);
  ui.input.value = `${ui.input.value.replace(RUN_TAG, "").trim()} [run ${tag}]`;
}

async function generate() {
  const task = tasks.get(ui.task.value);
  freshCutPrompt();
  const text = ui.input.value.trim();
  if (!task || !text) {
    setError("Pick a task and type some text first.");
    ui.input.focus();
    return;
  }
  const run = startRun();
  try {
    const job = await client.generate(
      task.name,
      buildInput(task, text),
      {
        onSubmit(job) {
          run.id = job.id;
          ui.jobId.textContent = job.id;
          ui.cancel.disabled = false;
          setStatus(job.status);
        },
        onStatus(/** @type {any} */ data) {
          setStatus(data.status);
          if (data.attempt) ui.attempt.textContent = String(data.attempt);
          if (data.status === "queued" && data.error) {
            showNote(
              `Attempt ${data.attempt} failed (${data.error}); the job is queued again and ` +
                "Pub/Sub redelivers it after its backoff.",
            );
          }
        },
        onReset(reset) {
          ui.attempt.textContent = String(reset.attempt);
          ui.output.textContent = "";
          if (reset.attempt > 1) {
            showNote(
              `Retry: text reset — attempt ${reset.attempt} started after attempt ` +
                `${reset.attempt - 1} failed.`,
            );
          }
        },
        onDelta(delta, whole) {
          ui.attempt.textContent = String(delta.attempt);
          ui.output.textContent = whole;
          ui.output.scrollTop = ui.output.scrollHeight;
        },
        onUsage: showUsage,
      },
      { signal: run.abort.signal },
    );
    setStatus(job.status);
    ui.attempt.textContent = String(job.attempts);
    const result = /** @type {any} */ (job.result);
    if (job.status === "succeeded" && result) {
      ui.output.textContent =
        typeof result.text === "string" ? result.text : JSON.stringify(result, null, 2);
    }
    if (job.status === "failed" && job.error) setError(`${job.error.code}: ${job.error.message}`);
    if (job.status === "cancelled") showNote("Cancelled: the model stream was stopped.");
    showUsage(job.usage ?? (await billedUsage(job)));
  } catch (error) {
    setStatus("error");
    setError(describe(error));
  } finally {
    endRun();
  }
}

async function cancel() {
  if (!running?.id) return;
  ui.cancel.disabled = true;
  try {
    await client.cancel(running.id); // the event stream then ends with `cancelled`
  } catch (error) {
    // 409: it ended first; the stream says how.
    if (!(error instanceof GenJobsError && error.status === 409)) setError(describe(error));
  }
}

function applyPreset(/** @type {string} */ directives) {
  const text = ui.input.value.replace(DIRECTIVE, "").replace(RUN_TAG, "").trim() || SAMPLE_TEXT;
  ui.input.value = directives ? `${text} ${directives}` : text;
  ui.input.focus();
}

async function loadTasks(/** @type {string} */ apiBaseUrl) {
  const response = await fetch(`${apiBaseUrl}/v1/tasks`);
  if (!response.ok) throw new Error(`GET /v1/tasks answered ${response.status}`);
  const { items } = await response.json();
  ui.task.replaceChildren();
  for (const task of items) {
    tasks.set(task.name, task);
    ui.task.append(new Option(task.name, task.name, task.name === "summarize"));
  }
  ui.task.disabled = false;
  ui.submit.disabled = false;
  showTask();
}

const config = await loadConfig();
cachedToken = { token: config.token, at: Date.now() };
ui.apiUrl.textContent = config.apiBaseUrl;
const client = createClient({ baseUrl: config.apiBaseUrl, getToken });

ui.input.value = `${SAMPLE_TEXT} stub:tokens=60 stub:pace=20`;
ui.task.addEventListener("change", showTask);
ui.form.addEventListener("submit", (/** @type {Event} */ event) => {
  event.preventDefault();
  void generate();
});
ui.cancel.addEventListener("click", () => void cancel());
for (const button of ui.form.querySelectorAll("[data-directives]")) {
  button.addEventListener("click", () => applyPreset(button.dataset.directives));
}
window.addEventListener("pagehide", () => running?.abort.abort());
loadTasks(config.apiBaseUrl).catch((error) => setError(`Could not load tasks: ${describe(error)}`));
