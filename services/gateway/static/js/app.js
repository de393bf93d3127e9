// The promptgen web page: the seed's Manual Test Flow, as a person does it.
// Routes: #/ (new generation), #/jobs (recent jobs), #/jobs/<id> (one job, live).
import { applyMessage, counts, createClient, emptyJobState } from "./promptgen-client.js";

const client = createClient();
const main = document.getElementById("main");
const MODES = [["learn_mode", "Learn"], ["try_mode", "Try"], ["assess_mode", "Assess"]];
let cleanup = () => {};

// --- tiny DOM helpers -----------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

function toast(text, kind = "info") {
  const box = document.getElementById("toast");
  box.textContent = text;
  box.className = `show ${kind}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.className = ""; }, 5000);
}

function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err.message || String(err));
}

async function busy(button, work) {
  const label = button.textContent;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.textContent = `${label.replace(/…$/, "")}…`;
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    button.textContent = label;
  }
}

const modeLabel = (mode) => (MODES.find(([m]) => m === mode) || [mode, mode])[1];
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

// --- new generation --------------------------------------------------------------------

const draft = { template: null, personas: [], modes: {} };

function templateCard(template) {
  const t = template.template_data;
  return h("section", { class: "card", "aria-labelledby": "tpl-title" },
    h("h3", { id: "tpl-title" }, t.title),
    h("p", {}, t.description),
    t.context ? h("p", { class: "muted" }, t.context) : null,
    h("div", { class: "columns" },
      h("div", {}, h("h4", {}, "Learning objectives"),
        h("ul", {}, t.learning_objectives.map((o) => h("li", {}, o)))),
      h("div", {}, h("h4", {}, "Roles"),
        h("ul", {}, t.roles.map((r) => h("li", {}, h("strong", {}, r.name), r.description ? ` — ${r.description}` : "")))),
      h("div", {}, h("h4", {}, "A good conversation"),
        h("ul", {}, t.success_criteria.map((c) => h("li", {}, c))))));
}

function personaCard(p) {
  const select = h("select", { id: `mode-${p.id}`, "data-persona": p.id,
                               onchange: (e) => { draft.modes[p.id] = e.target.value; } },
    MODES.map(([value, label]) => h("option", { value, selected: draft.modes[p.id] === value }, label)));
  return h("li", { class: "card persona", "data-persona-id": p.id },
    h("div", { class: "persona-head" },
      h("h4", {}, p.name),
      h("span", { class: "badge" }, p.archetype)),
    h("p", { class: "muted" }, `${p.age} · ${p.role}`),
    h("p", { class: "muted small" }, p.system_prompt ? "Has a prompt" : "No prompt yet"),
    h("label", { for: `mode-${p.id}` }, "Mode "), select);
}

function renderNew() {
  const doc = h("textarea", { id: "scenario", rows: 10, required: true,
    placeholder: "# Title of the scenario\nWhat happens...\n\n## Learning objectives\n- ...\n\n## Roles\n- ..." });
  const file = h("input", { type: "file", id: "scenario-file", accept: ".txt,.md,text/plain,text/markdown",
    onchange: async (e) => { const f = e.target.files[0]; if (f) doc.value = await f.text(); } });
  const analyzeError = h("div");
  const templateBox = h("div", { id: "template" }, draft.template ? templateCard(draft.template) : null);
  const analyze = h("button", { type: "submit", id: "analyze" }, "Analyze scenario");
  const form = h("form", { class: "card", onsubmit: (e) => {
    e.preventDefault();
    analyzeError.replaceChildren();
    busy(analyze, async () => {
      try {
        draft.template = await client.analyzeScenario(doc.value);
        draft.personas = [];
        draft.modes = {};
        templateBox.replaceChildren(templateCard(draft.template));
        renderPersonaStep();
      } catch (err) { analyzeError.replaceChildren(errorBox(err)); }
    });
  } },
    h("label", { for: "scenario" }, "Scenario document"), doc,
    h("div", { class: "row" }, h("label", { for: "scenario-file", class: "file" }, "…or upload a file ", file), analyze),
    analyzeError);

  const personaStep = h("section", { id: "persona-step", "aria-labelledby": "step2" });
  function renderPersonaStep() {
    if (!draft.template) {
      personaStep.replaceChildren(h("h2", { id: "step2" }, "2. Personas"),
        h("p", { class: "empty" }, "Analyze a scenario first."));
      return;
    }
    const type = h("input", { id: "persona-type", value: "assess_mode_character", required: true });
    const count = h("input", { id: "persona-count", type: "number", min: 1, max: 20, value: 3, required: true });
    const generate = h("button", { type: "submit", id: "generate-personas" }, "Generate personas");
    const personaError = h("div");
    const list = h("ul", { class: "persona-grid", id: "personas" }, draft.personas.map(personaCard));
    const start = h("button", { id: "start", class: "primary", disabled: draft.personas.length === 0,
      onclick: () => busy(start, async () => {
        try {
          const ids = draft.personas.map((p) => p.id);
          const job = await client.startGeneration(draft.template.template_id, ids, draft.modes);
          location.hash = `#/jobs/${job.job_id}`;
        } catch (err) { personaError.replaceChildren(errorBox(err)); }
      }) }, "Create Avatar Interactions");
    personaStep.replaceChildren(
      h("h2", { id: "step2" }, "2. Personas"),
      h("form", { class: "card row", onsubmit: (e) => {
        e.preventDefault();
        personaError.replaceChildren();
        busy(generate, async () => {
          try {
            const made = await client.generatePersonas(draft.template.template_id, type.value, Number(count.value));
            for (const p of made.personas) draft.modes[p.id] = "assess_mode";
            draft.personas = draft.personas.concat(made.personas);
            renderPersonaStep();
          } catch (err) { personaError.replaceChildren(errorBox(err)); }
        });
      } },
        h("label", { for: "persona-type" }, "Persona type"), type,
        h("label", { for: "persona-count" }, "How many"), count, generate),
      personaError,
      draft.personas.length ? list : h("p", { class: "empty" }, "No personas yet."),
      h("h2", {}, "3. Generate prompts"),
      h("p", { class: "muted" }, "Give each persona a mode, then start: prompts are generated in the background and you can watch them arrive."),
      start);
  }
  renderPersonaStep();

  main.replaceChildren(
    h("h1", {}, "New generation"),
    h("h2", {}, "1. Scenario"), form, templateBox, personaStep);
}

// --- one job, live -------------------------------------------------------------------------

const storageKey = (jobId) => `promptgen.job.${jobId}`;

function personaState(entry) {
  switch (entry.status) {
    case "processing": return `Generating prompt for ${entry.name}…`;
    case "completed": return "Prompt ready";
    case "failed": return `Failed: ${entry.error || "unknown error"}`;
    case "cancelled": return "Cancelled";
    default: return "Queued";
  }
}

async function renderJob(jobId) {
  main.replaceChildren(h("h1", {}, "Job"), h("p", { class: "loading" }, "Loading…"));
  let view;
  try {
    view = await client.jobStatus(jobId);
  } catch (err) {
    main.replaceChildren(h("h1", {}, "Job"), errorBox(err), h("p", {}, h("a", { href: "#/jobs" }, "All jobs")));
    return;
  }
  // Resume where this tab was: state and position survive a reload of the page.
  const saved = JSON.parse(sessionStorage.getItem(storageKey(jobId)) || "null");
  let state = saved || emptyJobState(jobId);
  const names = {};
  for (const [pid, p] of Object.entries(view.personas)) {
    names[pid] = { name: p.persona_name, mode: p.mode };
    if (!state.progress[pid]) state.progress[pid] = { status: "queued", name: p.persona_name, mode: p.mode };
  }
  const total = view.total_personas;

  const bar = h("progress", { id: "progress", max: total, value: 0, "aria-label": "Personas done" });
  const summary = h("p", { id: "summary", "aria-live": "polite" });
  const badge = h("span", { id: "job-status", class: "badge" });
  const cancel = h("button", { id: "cancel", onclick: () => busy(cancel, async () => {
    try { await client.cancel(jobId); toast("Cancelling: no new prompt will be started."); }
    catch (err) { toast(err.message, "error"); }
  }) }, "Cancel job");
  const retry = h("button", { id: "retry-failed", class: "primary", onclick: () => busy(retry, async () => {
    try {
      const next = await client.retryFailed(jobId);
      location.hash = `#/jobs/${next.job_id}`;
    } catch (err) { toast(err.message, "error"); }
  }) }, "Retry failed");
  const rows = h("ul", { id: "job-personas", class: "rows" });
  const resultsBox = h("section", { id: "results" });
  const timeline = h("section", { id: "timeline" });
  const log = h("ol", { id: "live-log", class: "log", "aria-label": "Live messages" });
  for (const line of state.log || []) log.append(h("li", {}, line));

  function row(pid) {
    const entry = { ...names[pid], ...state.progress[pid] };
    const li = h("li", { class: `row ${entry.status}`, "data-persona-id": pid },
      h("div", { class: "row-main" },
        h("strong", {}, entry.name), " ", h("span", { class: "badge" }, modeLabel(entry.mode)),
        h("span", { class: "state" }, personaState(entry))));
    if (entry.status === "completed") {
      const body = h("pre", { class: "prompt" }, "Loading…");
      const details = h("details", { ontoggle: async () => {
        if (!details.open || body.dataset.loaded) return;
        try {
          const p = await client.getPersona(pid);
          body.textContent = p.system_prompt;
          body.dataset.loaded = "1";
          meta.textContent = `${p.system_prompt.length.toLocaleString()} characters · mode ${modeLabel(p.prompt_mode)}`;
        } catch (err) { body.textContent = err.message; }
      } }, h("summary", {}, "Show prompt"));
      const meta = h("p", { class: "muted small" });
      const interaction = h("div", { class: "interaction" });
      const make = h("button", { class: "small", onclick: () => busy(make, async () => {
        try {
          const made = await client.createInteraction({ mode: entry.mode, avatars: [], languages: ["en"], persona_id: pid });
          interaction.replaceChildren(h("p", { class: "ok" },
            `Avatar interaction ${made.id.slice(0, 8)} created; it uses the persona's prompt `,
            `(${made.effective_system_prompt ? made.effective_system_prompt.length.toLocaleString() : 0} characters).`));
        } catch (err) { interaction.replaceChildren(errorBox(err)); }
      }) }, "Create avatar interaction");
      details.append(meta, body);
      li.append(details, h("div", { class: "row-actions" }, make), interaction);
    }
    return li;
  }

  const painted = {};  // pid -> [status, row]: a row is redrawn only when its state changes
  function paintRows() {
    const items = Object.keys(names).map((pid) => {
      const status = (state.progress[pid] || {}).status;
      if (!painted[pid] || painted[pid][0] !== status) painted[pid] = [status, row(pid)];
      return painted[pid][1];
    });
    if (items.some((li, i) => rows.children[i] !== li)) rows.replaceChildren(...items);
  }

  function paint() {
    const c = counts(state, total);
    bar.value = c.done;
    summary.textContent = `${c.done} of ${total} done · ${c.successful} successful · ${c.failed} failed`;
    badge.textContent = state.status === "idle" ? view.status : state.status;
    badge.className = `badge status-${badge.textContent}`;
    const running = !["completed", "failed", "cancelled", "expired"].includes(badge.textContent);
    cancel.hidden = !running;
    retry.hidden = running || c.failed === 0;
    paintRows();
    if (state.results && !resultsBox.hasChildNodes()) paintResults(state.results);
  }

  function paintResults(results) {
    const t = results.template_data;
    resultsBox.replaceChildren(
      h("h2", {}, "Results"),
      h("p", {}, h("strong", {}, t.title), ` — ${results.successful} of ${results.total_personas} prompts generated`,
        results.failed ? `, ${results.failed} failed` : "", results.cancelled ? `, ${results.cancelled} cancelled` : "",
        results.usage && results.usage.completion_tokens ? ` · ${results.usage.prompt_tokens + results.usage.completion_tokens} tokens` : ""),
      h("p", { class: "muted" }, t.description));
    showTimeline();
  }

  async function showTimeline() {
    try {
      const history = await client.jobEvents(jobId);
      timeline.replaceChildren(h("h2", {}, "Event history"),
        h("table", { class: "events" },
          h("thead", {}, h("tr", {}, ["Time", "Seq", "Event", "Persona", "Status", "Error"].map((x) => h("th", { scope: "col" }, x)))),
          h("tbody", {}, history.events.map((e) => h("tr", {},
            h("td", {}, new Date(e.time).toLocaleTimeString()), h("td", {}, String(e.seq)), h("td", {}, e.type),
            h("td", {}, e.persona_id ? (names[e.persona_id] || {}).name || e.persona_id.slice(0, 8) : ""),
            h("td", {}, e.status || ""), h("td", {}, e.error || ""))))));
    } catch (err) { timeline.replaceChildren(errorBox(err)); }
  }

  function describe(message) {
    if (message.type === "status_update") return `Job ${message.status}${message.error ? `: ${message.error}` : ""}`;
    if (message.type === "results") return "Results are in";
    const name = message.persona_name || (names[message.persona_id] || {}).name || message.persona_id;
    return `${name}: ${personaState({ ...message, name })}`;
  }

  main.replaceChildren(
    h("h1", {}, "Job ", badge),
    h("p", { class: "muted small" }, `Job ${jobId}${view.retry_of ? ` · retry of ` : ""}`,
      view.retry_of ? h("a", { href: `#/jobs/${view.retry_of}` }, view.retry_of.slice(0, 8)) : ""),
    h("div", { class: "card" }, bar, summary, h("div", { class: "row" }, cancel, retry)),
    h("h2", {}, "Personas"), rows,
    resultsBox,
    h("details", { class: "card" }, h("summary", {}, "Live messages"), log),
    timeline);
  paint();

  const finished = ["completed", "failed", "cancelled", "expired"].includes(view.status) && state.results;
  if (finished) return;
  const follower = client.follow(jobId, {
    lastEventId: state.lastEventId,
    onMessage: (message, id) => {
      state = applyMessage(state, message, id);
      if (message.persona_id && !names[message.persona_id]) {
        names[message.persona_id] = { name: message.persona_name, mode: message.mode };
      }
      const line = describe(message);
      state.log = (state.log || []).concat(line);
      log.append(h("li", {}, line));
      sessionStorage.setItem(storageKey(jobId), JSON.stringify(state));
      paint();
    },
    onError: async () => {
      // The stream is over (or was refused): show the job as the server knows it.
      const latest = await client.jobStatus(jobId).catch(() => null);
      if (latest && latest.results && !state.results) {
        state = { ...state, status: latest.status, results: latest.results };
        for (const [pid, p] of Object.entries(latest.personas)) {
          state.progress[pid] = { status: p.status, name: p.persona_name, mode: p.mode, error: p.error };
        }
        paint();
      }
    },
  });
  cleanup = () => follower.close();
}

// --- recent jobs ---------------------------------------------------------------------------

async function renderJobs() {
  main.replaceChildren(h("h1", {}, "Jobs"), h("p", { class: "loading" }, "Loading…"));
  try {
    const { jobs } = await client.listJobs(50);
    main.replaceChildren(h("h1", {}, "Jobs"), jobs.length === 0
      ? h("p", { class: "empty" }, "No jobs yet. ", h("a", { href: "#/" }, "Start one."))
      : h("table", { class: "jobs" },
          h("thead", {}, h("tr", {}, ["Started", "Status", "Personas", "Successful", "Failed", ""].map((x) => h("th", { scope: "col" }, x)))),
          h("tbody", {}, jobs.map((j) => h("tr", {},
            h("td", {}, when(j.created_at)),
            h("td", {}, h("span", { class: `badge status-${j.status}` }, j.status)),
            h("td", {}, String(j.total_personas)), h("td", {}, String(j.completed)), h("td", {}, String(j.failed)),
            h("td", {}, h("a", { href: `#/jobs/${j.job_id}`, "aria-label": `Open job ${j.job_id}` }, "Open")))))));
  } catch (err) {
    main.replaceChildren(h("h1", {}, "Jobs"), errorBox(err));
  }
}

// --- routing -----------------------------------------------------------------------------------

function route() {
  cleanup();
  cleanup = () => {};
  const hash = location.hash || "#/";
  const job = hash.match(/^#\/jobs\/([A-Za-z0-9_-]+)$/);
  for (const a of document.querySelectorAll("[data-nav]")) {
    if ((a.dataset.nav === "jobs") === hash.startsWith("#/jobs")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (job) renderJob(job[1]);
  else if (hash === "#/jobs") renderJobs();
  else renderNew();
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
route();
