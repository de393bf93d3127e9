// promptgen client: start prompt generation, follow it live with resume, retry, cancel.
// Plain ES module, no dependencies: import it from any frontend (or use the React hook
// in use-prompt-generation.js, which is built on it).

export class PromptgenError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.field = body && body.field;
    this.ids = body && body.ids;
  }
}

// The state of one job as its SSE messages arrive. Pure: feed it messages in order.
export function emptyJobState(jobId = null) {
  return { jobId, status: "idle", error: null, progress: {}, results: null, lastEventId: null };
}

export function applyMessage(state, message, eventId) {
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
  }
  return next;
}

export function counts(state, total) {
  const values = Object.values(state.progress);
  const done = values.filter((p) => ["completed", "failed", "cancelled"].includes(p.status)).length;
  return {
    total: total ?? values.length,
    done,
    successful: values.filter((p) => p.status === "completed").length,
    failed: values.filter((p) => p.status === "failed").length,
    processing: values.filter((p) => p.status === "processing").length,
  };
}

export function createClient({ baseUrl = "", fetchImpl = globalThis.fetch.bind(globalThis),
                               EventSourceImpl = globalThis.EventSource } = {}) {
  async function call(method, path, body) {
    const response = await fetchImpl(baseUrl + path, {
      method,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) throw new PromptgenError(response.status, data);
    return data;
  }

  return {
    analyzeScenario: (scenarioDocument) =>
      call("POST", "/scenario/analyze-scenario-enhanced", { scenario_document: scenarioDocument }),
    generatePersonas: (templateId, personaType, count) =>
      call("POST", "/scenario/generate-personas", { template_id: templateId, persona_type: personaType, count }),
    getTemplate: (templateId) => call("GET", `/scenario/templates/${encodeURIComponent(templateId)}`),
    listPersonas: (templateId) => call("GET", `/scenario/personas?template_id=${encodeURIComponent(templateId)}`),
    getPersona: (personaId) => call("GET", `/scenario/personas/${encodeURIComponent(personaId)}`),
    startGeneration: (templateId, personaIds, modeMapping) =>
      call("POST", "/scenario/v2/generate-final-prompts",
           { template_id: templateId, persona_ids: personaIds, mode_mapping: modeMapping }),
    jobStatus: (jobId) => call("GET", `/scenario/v2/job-status/${encodeURIComponent(jobId)}`),
    listJobs: (limit = 20) => call("GET", `/scenario/v2/jobs?limit=${limit}`),
    jobEvents: (jobId) => call("GET", `/scenario/v2/jobs/${encodeURIComponent(jobId)}/events`),
    retryFailed: (jobId) => call("POST", `/scenario/v2/jobs/${encodeURIComponent(jobId)}/retry-failed`),
    cancel: (jobId) => call("POST", `/scenario/v2/jobs/${encodeURIComponent(jobId)}/cancel`),
    createInteraction: (body) => call("POST", "/avatar-interactions", body),
    getInteraction: (id) => call("GET", `/avatar-interactions/${encodeURIComponent(id)}`),

    // Follow a job over SSE. `lastEventId` resumes after a message already seen (a page
    // reload); the browser's own reconnects send Last-Event-ID by themselves. Each message
    // is delivered once: ids already applied are skipped. Returns { close() }.
    follow(jobId, { lastEventId = null, onMessage = () => {}, onEnd = () => {}, onError = () => {} } = {}) {
      let url = `${baseUrl}/scenario/v2/prompt-generation-status/${encodeURIComponent(jobId)}`;
      if (lastEventId) url += `?last_event_id=${encodeURIComponent(lastEventId)}`;
      const source = new EventSourceImpl(url);
      const seen = new Set();
      let ended = false;
      source.onmessage = (event) => {
        if (event.lastEventId && seen.has(event.lastEventId)) return;
        if (event.lastEventId) seen.add(event.lastEventId);
        const message = JSON.parse(event.data);
        onMessage(message, event.lastEventId || null);
        if (message.type === "results") {
          ended = true;
          source.close();
          onEnd(message.results);
        }
      };
      source.onerror = () => {
        // CLOSED: the server ended the stream (204 after the end) or refused it.
        if (source.readyState === EventSourceImpl.CLOSED && !ended) {
          ended = true;
          onError(new Error("the live connection closed"));
        }
      };
      return { close: () => { ended = true; source.close(); } };
    },
  };
}
