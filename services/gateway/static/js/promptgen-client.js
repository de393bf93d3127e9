// promptgen client: start prompt generation, follow it live with resume, retry, cancel.
// A plain ES module with no dependencies and no build step: import it from any frontend
// (the web page served at / is built on it; use-prompt-generation.js is the React hook).
//
//   import { createClient } from "/static/js/promptgen-client.js";
//   const client = createClient();                 // same origin; or { baseUrl: "https://…" }
//   // with auth on: createClient({ apiKey }) or createClient({ getToken: async () => key }),
//   // sent as `Authorization: Bearer …`; the SSE stream opens with the job's stream token
//   const { job_id } = await client.startGeneration(templateId, personaIds, modeMapping);
//   const watcher = client.watch(job_id, { onChange: (state) => render(state) });
//   // state = { jobId, status, progress: {pid: {status, name, mode, error, errorCode}}, results, lastEventId }
//   // resume after a page reload: client.watch(job_id, { state: savedState, onChange })

export class PromptgenError extends Error {
  constructor(status, body) {
    super((body && typeof body.detail === "string" && body.detail) || `The server answered HTTP ${status}`);
    this.name = "PromptgenError";
    this.status = status;
    this.code = body && body.code;
    this.field = body && body.field;
    this.ids = body && body.ids;
  }
}

export const MODES = ["learn_mode", "try_mode", "assess_mode"];
export const FINISHED = ["completed", "failed", "cancelled", "expired"];
const PERSONA_DONE = ["completed", "failed", "cancelled"];

// --- the state of one job, built from its SSE messages (pure functions) -----------------

export function emptyJobState(jobId = null) {
  return { jobId, status: "idle", error: null, progress: {}, results: null, lastEventId: null };
}

// Apply one SSE message (already parsed) and its id; returns a new state.
export function applyMessage(state, message, eventId = null) {
  const next = { ...state, lastEventId: eventId ?? state.lastEventId };
  if (message.type === "status_update") {
    next.status = message.status;
    next.error = message.error ?? null;
  } else if (message.type === "persona_progress") {
    const before = state.progress[message.persona_id] || {};
    next.progress = {
      ...state.progress,
      [message.persona_id]: {
        ...before,
        status: message.status,
        name: message.persona_name ?? before.name,
        mode: message.mode ?? before.mode,
        error: message.error ?? null,
        errorCode: message.error_code ?? null,
      },
    };
  } else if (message.type === "results") {
    next.results = message.results;
    // The final word on every persona (those a cancel or the deadline cut short also had a
    // last persona_progress just before).
    next.progress = { ...state.progress };
    for (const [pid, r] of Object.entries(message.results.personas || {})) {
      const before = next.progress[pid] || {};
      next.progress[pid] = { ...before, status: r.status, name: r.persona_name ?? before.name,
                             mode: r.mode ?? before.mode, error: r.error ?? before.error ?? null,
                             errorCode: r.error_code ?? before.errorCode ?? null };
    }
  }
  return next;
}

// The same state from a GET /scenario/v2/job-status view (polling, or after a stream ended).
export function applyJobView(state, view) {
  const progress = { ...state.progress };
  for (const [pid, p] of Object.entries(view.personas || {})) {
    progress[pid] = { ...progress[pid], status: p.status, name: p.persona_name, mode: p.mode,
                      error: p.error ?? null, errorCode: p.error_code ?? null };
  }
  return { ...state, jobId: view.job_id, status: view.status, error: view.error ?? null, progress,
           results: view.results ?? state.results };
}

export function counts(state, total) {
  const values = Object.values(state.progress);
  const count = (status) => values.filter((p) => p.status === status).length;
  return {
    total: total ?? (state.results ? state.results.total_personas : values.length),
    done: values.filter((p) => PERSONA_DONE.includes(p.status)).length,
    successful: count("completed"),
    failed: count("failed"),
    cancelled: count("cancelled"),
    processing: count("processing"),
  };
}

export const isFinished = (status) => FINISHED.includes(status);

// --- HTTP + SSE --------------------------------------------------------------------------

// Credentials, for a gateway with auth on (either one; neither: auth off):
//   apiKey: an API key (`promptgen keys create`);
//   getToken: an async function returning the key (or another bearer token) to send, called
//     before every request, so a key can change or be fetched late; null or "": send none.
// A key travels only in the Authorization header, never in a URL. An EventSource cannot send
// a header, so a job's stream opens with its `sse_endpoint`, which carries a stream token for
// that job alone: from the 202 of startGeneration / retryFailed, or else from jobStatus.
// onUnauthenticated(error): called when the server answers 401 (no key, or one it refuses),
// before the call rejects with that error.
export function createClient({ baseUrl = "", apiKey = null, getToken = null, onUnauthenticated = null,
                               fetchImpl = globalThis.fetch.bind(globalThis),
                               EventSourceImpl = globalThis.EventSource } = {}) {
  async function bearer() {
    if (!getToken) return apiKey || null;
    try {
      return (await getToken()) || null;
    } catch (err) {
      throw new PromptgenError(0, { detail: `No API key to send: ${(err && err.message) || err}`, code: "no_token" });
    }
  }

  async function call(method, path, body, extraHeaders = {}) {
    const headers = { accept: "application/json", ...extraHeaders };
    if (body !== undefined) headers["content-type"] = "application/json";
    const token = await bearer();
    if (token) headers.authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetchImpl(baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new PromptgenError(0, { detail: "The server cannot be reached. Check that promptgen is running." });
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text.slice(0, 300) }; }
    if (!response.ok) {
      const error = new PromptgenError(response.status, data);
      if (response.status === 401 && onUnauthenticated) onUnauthenticated(error);
      throw error;
    }
    return data;
  }
  const id = encodeURIComponent;

  // Where a job's stream is: the sse_endpoint given, else (with credentials) the one job status
  // gives, with a fresh stream token; else the plain path (auth off).
  async function streamUrl(jobId, sseEndpoint) {
    let endpoint = sseEndpoint;
    if (!endpoint && (await bearer())) endpoint = (await client.jobStatus(jobId)).sse_endpoint;
    endpoint = endpoint || `/scenario/v2/prompt-generation-status/${id(jobId)}`;
    return /^https?:/.test(endpoint) ? endpoint : baseUrl + endpoint;
  }

  const client = {
    analyzeScenario: (scenarioDocument) =>
      call("POST", "/scenario/analyze-scenario-enhanced", { scenario_document: scenarioDocument }),
    // idempotencyKey: names the personas, so the same call made again (its answer was lost, or a
    // 503 came after some were stored) answers with them and makes only those missing.
    generatePersonas: (templateId, personaType, count, { idempotencyKey } = {}) =>
      call("POST", "/scenario/generate-personas", { template_id: templateId, persona_type: personaType, count },
           idempotencyKey ? { "idempotency-key": idempotencyKey } : {}),
    getTemplate: (templateId) => call("GET", `/scenario/templates/${id(templateId)}`),
    // Every persona of the template, oldest first, read a page of up to 1,000 at a time.
    listPersonas: async (templateId) => {
      const personas = [];
      let after = null;
      do {
        const page = await call("GET", `/scenario/personas?template_id=${id(templateId)}&limit=1000` +
                                (after ? `&after=${id(after)}` : ""));
        personas.push(...page.personas);
        after = page.next_after || null;
      } while (after);
      return { personas };
    },
    getPersona: (personaId) => call("GET", `/scenario/personas/${id(personaId)}`),
    // idempotencyKey: names the job, so the same call made again (its answer was lost) is that job.
    startGeneration: (templateId, personaIds, modeMapping, { idempotencyKey } = {}) =>
      call("POST", "/scenario/v2/generate-final-prompts",
           { template_id: templateId, persona_ids: personaIds, mode_mapping: modeMapping },
           idempotencyKey ? { "idempotency-key": idempotencyKey } : {}),
    jobStatus: (jobId) => call("GET", `/scenario/v2/job-status/${id(jobId)}`),
    listJobs: (limit = 20) => call("GET", `/scenario/v2/jobs?limit=${Number(limit)}`),
    // Who the key is: { auth, tenant, key_id, scopes }; 401 for a key the server refuses.
    whoami: () => call("GET", "/auth/whoami"),
    // One page of a job's event history, oldest first: { job_id, events, next_after }. Pass
    // next_after as `after` for the next page; it is null when there is no more (yet).
    jobEvents: (jobId, { after = 0, limit = 100 } = {}) =>
      call("GET", `/scenario/v2/jobs/${id(jobId)}/events?after=${Number(after)}&limit=${Number(limit)}`),
    retryFailed: (jobId) => call("POST", `/scenario/v2/jobs/${id(jobId)}/retry-failed`),
    cancel: (jobId) => call("POST", `/scenario/v2/jobs/${id(jobId)}/cancel`),
    createInteraction: (body) => call("POST", "/avatar-interactions", body),
    getInteraction: (interactionId) => call("GET", `/avatar-interactions/${id(interactionId)}`),

    // Follow a job's SSE stream. `sseEndpoint`: the job's `sse_endpoint` (from the 202 or job
    // status; with auth on it carries the stream token); without it, see streamUrl above.
    // `lastEventId` resumes after a message already processed (a fresh page load); when the
    // connection drops, the browser reconnects by itself with Last-Event-ID. Each message id is
    // delivered once. onConnection gets "connecting", "live", "reconnecting" or "closed".
    // Returns { close() }.
    follow(jobId, { sseEndpoint = null, lastEventId = null, onMessage = () => {}, onEnd = () => {},
                    onError = () => {}, onConnection = () => {} } = {}) {
      const seen = new Set();
      let ended = false;
      let source = null;
      onConnection("connecting");
      streamUrl(jobId, sseEndpoint).then((url) => {
        if (ended) return;
        if (lastEventId) url += `${url.includes("?") ? "&" : "?"}last_event_id=${id(lastEventId)}`;
        open(url);
      }, (err) => {
        if (ended) return;
        ended = true;
        onConnection("closed");
        onError(err);
      });
      return { close: () => { ended = true; if (source) source.close(); } };

      function open(url) {
        source = new EventSourceImpl(url);
        source.onopen = () => { if (!ended) onConnection("live"); };
        source.onmessage = (event) => {
          if (ended) return;
          if (event.lastEventId) {
            if (seen.has(event.lastEventId)) return;
            seen.add(event.lastEventId);
          }
          const message = JSON.parse(event.data);
          onMessage(message, event.lastEventId || null);
          if (message.type === "results") {
            ended = true;
            source.close();
            onConnection("closed");
            onEnd(message.results);
          }
        };
        source.onerror = () => {
          if (ended) return;
          if (source.readyState === EventSourceImpl.CLOSED) {
            // The server refused the stream (an expired stream token, a busy gateway), or had
            // nothing left (204 after the end).
            ended = true;
            onConnection("closed");
            onError(new Error("The live connection closed"));
          } else {
            onConnection("reconnecting");  // the browser retries with Last-Event-ID
          }
        };
      }
    },

    // follow() plus the state: onChange(state, message) after every message. Pass a saved
    // `state` (e.g. from sessionStorage) to resume after it, or none to replay the whole
    // history; `sseEndpoint` as for follow(). When the stream closes without results, the
    // state is completed from GET /scenario/v2/job-status; if the job still runs (the stream
    // token expired, the gateway was busy), the stream is followed again from there, with the
    // fresh sse_endpoint job status gives, up to three times in a row without a message.
    watch(jobId, { state = null, sseEndpoint = null, onChange = () => {}, onConnection = () => {} } = {}) {
      let current = state && state.jobId === jobId ? state : emptyJobState(jobId);
      let follower = null;
      let closed = false;
      let refused = 0;
      let timer = null;
      const start = (endpoint) => {
        follower = client.follow(jobId, {
          sseEndpoint: endpoint,
          lastEventId: current.lastEventId,
          onConnection,
          onMessage: (message, eventId) => {
            refused = 0;
            current = applyMessage(current, message, eventId);
            onChange(current, message);
          },
          onError: async () => {
            let view = null;
            try {
              view = await client.jobStatus(jobId);
              current = applyJobView(current, view);
            } catch (err) {
              current = { ...current, error: err.message };
            }
            if (closed) return;
            onChange(current, null);
            if (view && !isFinished(view.status) && refused < 3) {
              refused += 1;
              timer = setTimeout(() => { if (!closed) start(view.sse_endpoint); }, 1000 * refused);
            }
          },
        });
      };
      start(sseEndpoint);
      return {
        close: () => { closed = true; clearTimeout(timer); follower.close(); },
        get state() { return current; },
      };
    },
  };
  return client;
}
