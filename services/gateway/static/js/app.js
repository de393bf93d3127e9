// The promptgen web page: the specification's Manual Test Flow, as a person does it.
// Routes: #/ (new generation), #/jobs (recent jobs), #/jobs/<id> (one job, live, resumable).
// With auth on, a sign-in form comes first: the API key is kept in this tab's sessionStorage
// (gone when the tab closes; never in localStorage, never in a URL) and sent as a Bearer header.
// Plain ES module on top of promptgen-client.js; no framework, no build step.
import { counts, createClient, emptyJobState, isFinished } from "./promptgen-client.js";

const KEY = "promptgen.apiKey";
const storedKey = () => { try { return sessionStorage.getItem(KEY); } catch { return null; } };
const client = createClient({ getToken: async () => storedKey(), onUnauthenticated: (err) => askForKey(err) });
const main = document.getElementById("main");
const signOutButton = document.getElementById("sign-out");
const signedInAs = document.getElementById("signed-in-as");
let identity = null;  // { tenant, scopes } of the key signed in with; null: none (or auth off)
const MODES = [["learn_mode", "Learn"], ["try_mode", "Try"], ["assess_mode", "Assess"]];
const PERSONA_TYPES = ["assess_mode_character", "try_mode_character"];
const EXAMPLE = `# Delivering difficult news
A physician tells a patient's family that the treatment has not worked and that the
care team recommends moving to comfort care.

## Learning objectives
- Deliver bad news clearly, without jargon
- Respond to emotion with empathy before giving more information
- Agree on next steps with the family

## Roles
- Physician: the learner
- Family member - the patient's adult child, who hoped for better news
- Nurse: supports the family during the conversation
`;
let cleanup = () => {};
let routeToken = 0;  // a page rendered for an older route must not draw over the current one
let signInNotice = undefined;  // undefined: signed in (or auth off); else the sign-in page shows, with this note

// --- small helpers ---------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "value") el.value = value;
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

const errorBox = (err) => h("p", { class: "error", role: "alert" }, err.message || String(err));

async function busy(button, work) {
  const label = button.textContent;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.textContent = `${label}…`;
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    button.textContent = label;
  }
}

const modeLabel = (mode) => (MODES.find(([m]) => m === mode) || [mode, mode || "—"])[1];
const number = (n) => Number(n).toLocaleString("en");
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const short = (id) => String(id).slice(0, 8);
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const tableWrap = (table) => h("div", { class: "table-wrap" }, table);

function load(key) {
  try { return JSON.parse(sessionStorage.getItem(key) || "null"); } catch { return null; }
}
function save(key, value) {
  try { sessionStorage.setItem(key, JSON.stringify(value)); } catch { /* private mode, quota */ }
}

function templateCard(template, headingId = "tpl-title") {
  const t = template.template_data;
  const list = (items, render) => (items && items.length
    ? h("ul", {}, items.map(render)) : h("p", { class: "empty" }, "None found in the document."));
  return h("section", { class: "card template", "aria-labelledby": headingId },
    h("h3", { id: headingId }, t.title),
    t.description ? h("p", {}, t.description) : null,
    t.context ? h("details", { class: "context" }, h("summary", {}, "Context"), h("p", { class: "muted" }, t.context)) : null,
    h("div", { class: "columns" },
      h("div", {}, h("h4", {}, "Learning objectives"), list(t.learning_objectives, (o) => h("li", {}, o))),
      h("div", {}, h("h4", {}, "Roles"), list(t.roles, (r) => h("li", {}, h("strong", {}, r.name),
        r.description ? ` — ${r.description}` : ""))),
      h("div", {}, h("h4", {}, "Success criteria"), list(t.success_criteria, (c) => h("li", {}, c)))));
}

// --- new generation ----------------------------------------------------------------------------

const DRAFT = "promptgen.draft";
const draft = Object.assign({ document: "", template: null, personas: [], modes: {} }, load(DRAFT));
const saveDraft = () => save(DRAFT, draft);
const newKey = () => Array.from(crypto.getRandomValues(new Uint8Array(16)),
                                (b) => b.toString(16).padStart(2, "0")).join("");

function personaCard(p, onMode) {
  const select = h("select", { id: `mode-${p.id}`, "data-persona": p.id, onchange: (e) => onMode(p.id, e.target.value) },
    MODES.map(([value, label]) => h("option", { value, selected: draft.modes[p.id] === value }, label)));
  return h("li", { class: "card persona", "data-persona-id": p.id },
    h("div", { class: "persona-head" }, h("h4", {}, p.name), h("span", { class: "badge" }, p.archetype)),
    h("p", { class: "muted" }, `${p.age} · ${p.role}`),
    h("p", { class: "tag" }, p.system_prompt ? `Prompt: ${number(p.system_prompt.length)} characters` : "No prompt yet"),
    h("div", { class: "field-inline" }, h("label", { for: `mode-${p.id}` }, "Mode"), select));
}

function renderNew() {
  const doc = h("textarea", { id: "scenario", rows: 10, required: true, value: draft.document,
    "aria-describedby": "scenario-help",
    oninput: (e) => { draft.document = e.target.value; saveDraft(); },
    placeholder: "# Title of the scenario\nWhat happens, who is involved…\n\n## Learning objectives\n- …\n\n## Roles\n- Role: description" });
  const file = h("input", { type: "file", id: "scenario-file", accept: ".txt,.md,.markdown,text/plain,text/markdown",
    onchange: async (e) => {
      const f = e.target.files[0];
      if (!f) return;
      doc.value = await f.text();
      draft.document = doc.value;
      saveDraft();
      toast(`Loaded ${f.name}`);
    } });
  const example = h("button", { type: "button", class: "link", onclick: () => {
    doc.value = EXAMPLE; draft.document = EXAMPLE; saveDraft(); doc.focus();
  } }, "Use an example");
  const analyzeError = h("div");
  const templateBox = h("div", { id: "template" }, draft.template ? templateCard(draft.template) : null);
  const analyze = h("button", { type: "submit", id: "analyze", class: "primary" }, "Analyze scenario");
  const form = h("form", { class: "card", "aria-labelledby": "step1", onsubmit: (e) => {
    e.preventDefault();
    analyzeError.replaceChildren();
    busy(analyze, async () => {
      try {
        draft.template = await client.analyzeScenario(doc.value);
        Object.assign(draft, { personas: [], modes: {} });
        saveDraft();
        templateBox.replaceChildren(templateCard(draft.template));
        renderPersonaStep();
        document.getElementById("tpl-title").scrollIntoView({ block: "nearest" });
      } catch (err) { analyzeError.replaceChildren(errorBox(err)); }
    });
  } },
    h("label", { for: "scenario" }, "Scenario document"),
    h("p", { id: "scenario-help", class: "muted small" },
      "Paste the scenario in plain text or Markdown: a title, what happens, learning objectives and roles. ", example),
    doc,
    h("div", { class: "row" },
      h("label", { for: "scenario-file", class: "file" }, "…or upload a .txt or .md file", file),
      h("span", { class: "spacer" }), analyze),
    analyzeError);

  const personaStep = h("section", { id: "persona-step", "aria-labelledby": "step2" });
  const setMode = (pid, mode) => { draft.modes[pid] = mode; saveDraft(); };

  function renderPersonaStep() {
    const heading = h("h2", { id: "step2" }, h("span", { class: "step" }, "2"), "Personas");
    if (!draft.template) {
      personaStep.replaceChildren(heading,
        h("p", { class: "empty card" }, "Analyze a scenario first: its roles become the personas' roles."));
      return;
    }
    const type = h("input", { id: "persona-type", value: "assess_mode_character", required: true, list: "persona-types",
                              maxlength: 100, autocomplete: "off" });
    const types = h("datalist", { id: "persona-types" }, PERSONA_TYPES.map((t) => h("option", { value: t })));
    const count = h("input", { id: "persona-count", type: "number", min: 1, max: 20, value: 3, required: true,
                               inputmode: "numeric" });
    const generate = h("button", { type: "submit", id: "generate-personas" }, "Generate personas");
    const personaError = h("div");
    const startError = h("div");
    const list = h("ul", { class: "persona-grid", id: "personas", "aria-label": "Personas" },
      draft.personas.map((p) => personaCard(p, setMode)));
    const all = h("select", { id: "all-modes", onchange: (e) => {
      if (!e.target.value) return;
      for (const p of draft.personas) draft.modes[p.id] = e.target.value;
      saveDraft();
      for (const s of list.querySelectorAll("select")) s.value = e.target.value;
      e.target.value = "";
    } }, h("option", { value: "" }, "Choose…"), MODES.map(([value, label]) => h("option", { value }, label)));
    const start = h("button", { id: "start", class: "primary big", disabled: draft.personas.length === 0,
      onclick: () => busy(start, async () => {
        startError.replaceChildren();
        try {
          const ids = draft.personas.map((p) => p.id);
          const modes = Object.fromEntries(ids.map((id) => [id, draft.modes[id] || "assess_mode"]));
          // One key per selection until it starts: asked again after a lost answer, it is the same job.
          const asked = JSON.stringify([draft.template.template_id, ids, modes]);
          if (draft.start?.asked !== asked) { draft.start = { asked, key: newKey() }; saveDraft(); }
          const job = await client.startGeneration(draft.template.template_id, ids, modes,
                                                   { idempotencyKey: draft.start.key });
          delete draft.start; saveDraft();
          location.hash = `#/jobs/${job.job_id}`;
        } catch (err) { startError.replaceChildren(errorBox(err)); }
      }) }, "Create Avatar Interactions");
    const clear = h("button", { type: "button", class: "link", onclick: () => {
      Object.assign(draft, { personas: [], modes: {} }); saveDraft(); renderPersonaStep();
    } }, "Remove all personas");

    personaStep.replaceChildren(
      heading,
      h("form", { class: "card row", "aria-label": "Generate personas", onsubmit: (e) => {
        e.preventDefault();
        personaError.replaceChildren();
        busy(generate, async () => {
          try {
            // One key per request until it is answered: asked again after a lost answer or a 503,
            // it gives the same personas, made once.
            const asked = JSON.stringify([draft.template.template_id, type.value.trim(), Number(count.value)]);
            if (draft.generate?.asked !== asked) { draft.generate = { asked, key: newKey() }; saveDraft(); }
            const made = await client.generatePersonas(draft.template.template_id, type.value.trim(),
                                                       Number(count.value), { idempotencyKey: draft.generate.key });
            delete draft.generate;
            const known = new Set(draft.personas.map((p) => p.id));
            const added = made.personas.filter((p) => !known.has(p.id));
            for (const p of added) draft.modes[p.id] = "assess_mode";
            draft.personas = draft.personas.concat(added);
            saveDraft();
            renderPersonaStep();
            toast(`${plural(added.length, "persona")} added`);
          } catch (err) { personaError.replaceChildren(errorBox(err)); }
        });
      } },
        h("div", { class: "field" }, h("label", { for: "persona-type" }, "Persona type"), type, types),
        h("div", { class: "field" }, h("label", { for: "persona-count" }, "How many (1–20)"), count),
        generate),
      personaError,
      ...(draft.personas.length
        ? [h("div", { class: "row list-tools" },
            h("span", { class: "muted" }, plural(draft.personas.length, "persona")),
            h("span", { class: "spacer" }),
            h("label", { for: "all-modes", class: "small" }, "Set every mode to"), all, clear), list]
        : [h("p", { class: "empty card" }, "No personas yet: choose a type and a number, then generate.")]),
      h("h2", { id: "step3" }, h("span", { class: "step" }, "3"), "Generate the prompts"),
      h("div", { class: "card" },
        h("p", { class: "muted" }, draft.personas.length
          ? "Each persona's prompt is generated in the background for its mode; the next page shows them arriving live."
          : "Generate personas first."),
        start, startError));
  }
  renderPersonaStep();

  const reset = h("button", { type: "button", class: "link", onclick: () => {
    Object.assign(draft, { document: "", template: null, personas: [], modes: {} });
    saveDraft();
    renderNew();
  } }, "Start over");
  main.replaceChildren(
    h("div", { class: "title-row" }, h("h1", {}, "New generation"), draft.template ? reset : null),
    h("p", { class: "lead" }, "From a scenario document to a system prompt for every avatar persona."),
    h("h2", { id: "step1" }, h("span", { class: "step" }, "1"), "Scenario"), form, templateBox, personaStep);
}

// --- one job, live --------------------------------------------------------------------------------

const jobKey = (jobId) => `promptgen.job.${jobId}`;

function personaState(entry) {
  switch (entry.status) {
    case "processing": return `Generating prompt for ${entry.name}…`;
    case "completed": return "Prompt ready";
    case "failed": return "Failed";
    case "cancelled": return "Cancelled";
    default: return "Waiting";
  }
}

function describe(message, names) {
  if (message.type === "status_update") return `Job ${message.status}${message.error ? `: ${message.error}` : ""}`;
  if (message.type === "results") return "Results are in";
  const name = message.persona_name || (names[message.persona_id] || {}).name || message.persona_id;
  const state = message.status === "failed" ? `Failed: ${message.error || "unknown error"}` : personaState({ ...message, name });
  return `${name}: ${state}`;
}

// One persona's row on the job page, updated in place as messages arrive.
function personaRow(pid, job) {
  const name = h("strong", { class: "name" });
  const mode = h("span", { class: "badge" });
  const state = h("span", { class: "state" });
  const meta = h("p", { class: "meta muted small" });
  const problem = h("p", { class: "error small", hidden: true });
  const done = h("div", { class: "done", hidden: true });
  const li = h("li", { class: "row", "data-persona-id": pid },
    h("div", { class: "row-main" }, name, mode, state), meta, problem, done);
  let length = null;

  function buildDone() {
    length = h("span", { class: "prompt-length" });
    const body = h("pre", { class: "prompt", tabindex: 0, "aria-label": "Generated prompt" }, "Loading…");
    const promptMeta = h("p", { class: "muted small prompt-meta" });
    const details = h("details", { class: "show-prompt", ontoggle: async () => {
      if (!details.open || body.dataset.loaded) return;
      try {
        const p = await client.getPersona(pid);
        body.textContent = p.system_prompt || "(no prompt stored)";
        body.dataset.loaded = "1";
        promptMeta.textContent = `${number((p.system_prompt || "").length)} characters · mode ${modeLabel(p.prompt_mode)}`
          + (p.prompt_generated_at ? ` · generated ${when(p.prompt_generated_at)}` : "");
      } catch (err) { body.textContent = err.message; }
    } }, h("summary", {}, "Show prompt"), promptMeta, body);

    const iMode = h("select", { id: `i-mode-${pid}` },
      MODES.map(([value, label]) => h("option", { value, selected: value === job.entry(pid).mode }, label)));
    const iLang = h("input", { id: `i-lang-${pid}`, value: "en", autocomplete: "off" });
    const iAvatars = h("input", { id: `i-avatars-${pid}`, placeholder: "optional", autocomplete: "off",
      "aria-describedby": `i-help-${pid}` });
    const out = h("div", { class: "interaction", "aria-live": "polite" });
    const create = h("button", { type: "submit" }, "Create");
    const split = (s) => s.split(",").map((x) => x.trim()).filter(Boolean);
    const form = h("form", { class: "interaction-form", onsubmit: (e) => {
      e.preventDefault();
      busy(create, async () => {
        try {
          const made = await client.createInteraction({ mode: iMode.value, avatars: split(iAvatars.value),
            languages: split(iLang.value), persona_id: pid });
          const prompt = made.effective_system_prompt || "";
          out.replaceChildren(
            h("p", { class: "ok" }, `Avatar interaction ${short(made.id)} created · ${modeLabel(made.mode)} mode`,
              made.languages.length ? ` · ${made.languages.join(", ")}` : ""),
            made.prompt_source === "persona"
              ? h("details", { class: "effective", open: true },
                  h("summary", {}, `Prompt it will use: the persona's, ${number(prompt.length)} characters`),
                  h("pre", { class: "prompt", tabindex: 0, "aria-label": "Prompt the interaction uses" }, prompt))
              : h("p", { class: "error" }, "This interaction has no prompt yet."));
        } catch (err) { out.replaceChildren(errorBox(err)); }
      });
    } },
      h("div", { class: "field" }, h("label", { for: iMode.id }, "Mode"), iMode),
      h("div", { class: "field" }, h("label", { for: iLang.id }, "Languages"), iLang),
      h("div", { class: "field" }, h("label", { for: iAvatars.id }, "Avatars"), iAvatars),
      create,
      h("p", { id: `i-help-${pid}`, class: "muted small full" }, "Languages and avatars: comma-separated."));
    done.append(
      h("p", { class: "small prompt-line" }, length),
      details,
      h("details", { class: "make-interaction" }, h("summary", {}, "Create avatar interaction"), form, out));
  }

  return {
    li,
    update(entry, details, promptLength) {
      li.className = `row ${entry.status || "queued"}`;
      name.textContent = entry.name || short(pid);
      mode.textContent = modeLabel(entry.mode);
      state.replaceChildren(entry.status === "processing" ? h("span", { class: "spinner", "aria-hidden": "true" }) : "",
        personaState(entry));
      meta.textContent = details ? `${details.age} · ${details.role} · ${details.archetype}` : "";
      meta.hidden = !details;
      problem.hidden = entry.status !== "failed";
      problem.textContent = entry.status === "failed"
        ? `${entry.error || "The prompt could not be generated."}${entry.errorCode ? ` (${entry.errorCode})` : ""}` : "";
      done.hidden = entry.status !== "completed";
      if (entry.status === "completed") {
        if (!length) buildDone();
        length.textContent = promptLength
          ? `Prompt: ${number(promptLength)} characters · ${modeLabel(entry.mode)} mode`
          : `${modeLabel(entry.mode)} mode`;
      }
    },
  };
}

async function renderJob(jobId) {
  const token = routeToken;
  main.replaceChildren(h("h1", {}, "Job"), h("p", { class: "loading" }, "Loading the job…"));
  let view;
  try {
    view = await client.jobStatus(jobId);
    if (token !== routeToken) return;
  } catch (err) {
    if (token !== routeToken) return;
    main.replaceChildren(h("h1", {}, "Job not available"), errorBox(err),
      h("p", {}, h("a", { href: "#/jobs" }, "See all jobs"), " or ", h("a", { href: "#/" }, "start a new generation"), "."));
    return;
  }
  let closed = false;
  let watcher = null;
  let poll = null;
  cleanup = () => { closed = true; if (watcher) watcher.close(); clearInterval(poll); };

  // This tab's state of the job survives a reload: resume after the last message applied.
  const saved = load(jobKey(jobId));
  let state = saved && saved.state ? saved.state : emptyJobState(jobId);
  const log = saved && saved.log ? saved.log : [];
  const names = {};       // pid -> {name, mode} from the job view
  const details = {};     // pid -> persona document (age, role, archetype)
  const lengths = {};     // pid -> prompt length
  for (const [pid, p] of Object.entries(view.personas)) {
    names[pid] = { name: p.persona_name, mode: p.mode };
    if (p.prompt_length) lengths[pid] = p.prompt_length;
  }
  const total = view.total_personas;
  const job = { entry: (pid) => ({ status: "queued", ...names[pid], ...(state.progress[pid] || {}) }) };

  const heading = h("span", { id: "job-title" }, "Job");
  const badge = h("span", { id: "job-status", class: "badge" });
  const bar = h("progress", { id: "progress", max: total || 1, value: 0, "aria-label": "Personas done" });
  const summary = h("p", { id: "summary", class: "summary" });
  const connection = h("span", { id: "connection", class: "connection", role: "status" });
  const jobError = h("div", { id: "job-error" });
  const cancel = h("button", { id: "cancel", class: "danger", onclick: () => busy(cancel, async () => {
    try {
      await client.cancel(jobId);
      toast("Cancelling: personas not started yet will not be generated.");
    } catch (err) { toast(err.message, "error"); }
  }) }, "Cancel job");
  const retry = h("button", { id: "retry-failed", class: "primary", onclick: () => busy(retry, async () => {
    try {
      const next = await client.retryFailed(jobId);
      toast(`Retrying ${plural(next.persona_count, "failed persona")}`);
      location.hash = `#/jobs/${next.job_id}`;
    } catch (err) {
      if (err.code === "already_retried" && err.ids && err.ids.length) {  // a job is retried once: show that one
        toast("This job was retried already: here is its retry.");
        location.hash = `#/jobs/${err.ids[0]}`;
      } else toast(err.message, "error");
    }
  }) }, "Retry failed");
  const rows = h("ul", { id: "job-personas", class: "rows", "aria-label": "Personas of this job" });
  const resultsBox = h("section", { id: "results", "aria-label": "Results" });
  const timeline = h("section", { id: "timeline", "aria-labelledby": "timeline-title" });
  const logList = h("ol", { id: "live-log", class: "log" }, log.map((line) => h("li", {}, line)));
  const started = h("p", { class: "muted small" }, `Started ${when(view.created_at)} · ${plural(total, "persona")}`,
    view.retry_of ? [" · retry of ", h("a", { href: `#/jobs/${view.retry_of}` }, `job ${short(view.retry_of)}`)] : "",
    view.actor ? [h("br"), h("span", { id: "started-by" }, `started by key ${view.actor} (tenant ${view.tenant})`)] : "",
    h("br"), h("span", { class: "mono" }, `Job ${jobId}`));

  const rowViews = {};
  function paintRows() {
    for (const pid of Object.keys(names)) {
      if (!rowViews[pid]) {
        rowViews[pid] = personaRow(pid, job);
        rows.append(rowViews[pid].li);
      }
      rowViews[pid].update(job.entry(pid), details[pid], lengths[pid]);
    }
  }

  function paint() {
    const c = counts(state, total);
    const status = state.status === "idle" ? view.status : state.status;
    bar.value = c.done;
    bar.setAttribute("aria-valuetext", `${c.done} of ${total} done`);
    summary.textContent = `${c.done} of ${total} done · ${c.successful} successful · ${c.failed} failed`
      + (c.cancelled ? ` · ${c.cancelled} cancelled` : "");
    badge.textContent = status;
    badge.className = `badge status-${status}`;
    const running = !isFinished(status);
    cancel.hidden = !running;
    retry.hidden = running || c.failed === 0;
    retry.textContent = `Retry failed (${c.failed})`;
    if (!running) connection.textContent = "";
    jobError.replaceChildren(state.error && running === false && status !== "completed"
      ? h("p", { class: "error", role: "alert" }, state.error) : "");
    paintRows();
    if (state.results && !resultsBox.hasChildNodes()) paintResults(state.results);
  }

  function paintResults(results) {
    for (const [pid, p] of Object.entries(results.personas || {})) {
      if (p.prompt_length) lengths[pid] = p.prompt_length;
    }
    const usage = results.usage || {};
    const tokens = (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
    resultsBox.replaceChildren(
      h("h2", {}, "Results"),
      h("p", { class: "result-line" },
        h("strong", {}, `${results.successful} of ${results.total_personas} prompts generated`),
        results.failed ? ` · ${results.failed} failed` : "", results.cancelled ? ` · ${results.cancelled} cancelled` : "",
        tokens ? ` · ${number(tokens)} tokens` : ""),
      templateCard({ template_data: results.template_data }, "results-template"));
    paintRows();
    showTimeline();
  }

  // The event history, a page at a time (a 500-persona job has 1,500 events). The buttons read
  // the next page; the page itself (on opening, at the job's end, the poll while it runs) reads
  // only what is new, and only once every page before was asked for.
  const history = { events: [], after: 0, more: false, loading: Promise.resolve() };
  const nextPage = () => showTimeline({ asked: true });
  const refreshTimeline = h("button", { class: "small", onclick: () => busy(refreshTimeline, nextPage) }, "Refresh");
  const moreEvents = h("button", { id: "more-events", class: "small", onclick: () => busy(moreEvents, nextPage) },
    "Load more events");
  function showTimeline({ asked = false } = {}) {  // one read at a time, each after the last event shown
    history.loading = history.loading.then(() => (asked || !history.more ? loadTimelinePage() : undefined));
    return history.loading;
  }
  async function loadTimelinePage() {
    try {
      const page = await client.jobEvents(jobId, { after: history.after, limit: 200 });
      if (closed) return;
      const fresh = page.events.filter((e) => e.seq > history.after);
      history.events.push(...fresh);
      if (fresh.length) history.after = fresh[fresh.length - 1].seq;
      history.more = page.next_after !== null;
      paintTimeline();
    } catch (err) { timeline.replaceChildren(h("h2", { id: "timeline-title" }, "Event history"), errorBox(err)); }
  }
  function paintTimeline() {
    moreEvents.hidden = !history.more;
    timeline.replaceChildren(
      h("div", { class: "title-row" }, h("h2", { id: "timeline-title" }, "Event history"), refreshTimeline),
      history.events.length === 0 ? h("p", { class: "empty" }, "No events yet.") : tableWrap(
        h("table", { class: "events" },
          h("caption", { class: "sr-only" }, "Every event of this job, oldest first"),
          h("thead", {}, h("tr", {}, ["Time", "Seq", "Event", "Persona", "Status", "Error"].map((x) => h("th", { scope: "col" }, x)))),
          h("tbody", {}, history.events.map((e) => h("tr", {},
            h("td", {}, new Date(e.time).toLocaleTimeString()), h("td", {}, String(e.seq)), h("td", { class: "mono" }, e.type),
            h("td", {}, e.persona_id ? (names[e.persona_id] || {}).name || short(e.persona_id) : ""),
            h("td", {}, e.status ? h("span", { class: `badge status-${e.status}` }, e.status) : ""),
            h("td", {}, e.error || "")))))),
      h("p", { class: "muted small" }, `${plural(history.events.length, "event")} shown `, moreEvents));
  }

  main.replaceChildren(
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/jobs" }, "Jobs"), " › ", `Job ${short(jobId)}`),
    h("h1", {}, heading, badge),
    started,
    h("section", { class: "card progress-card", "aria-label": "Progress" },
      h("div", { class: "progress-head" }, summary, connection), bar, jobError,
      h("div", { class: "row" }, cancel, retry)),
    h("h2", {}, "Personas"), rows,
    resultsBox,
    timeline,
    h("details", { class: "card log-card" }, h("summary", {}, "Live messages"), logList));
  paint();
  showTimeline();

  // Template title and persona details (age, role, archetype): shown once known.
  client.getTemplate(view.template_id).then((t) => {
    heading.textContent = t.template_data.title;
    document.title = `${t.template_data.title} · promptgen`;
  }, () => {});
  client.listPersonas(view.template_id).then((list) => {
    for (const p of list.personas || []) if (names[p.id]) details[p.id] = p;
    if (!closed) paintRows();
  }, () => {});

  if (isFinished(view.status) && state.results) return;  // nothing left to follow
  const connectionText = { connecting: "Connecting…", live: "● Live", reconnecting: "Connection lost, reconnecting…", closed: "" };
  watcher = client.watch(jobId, {
    state,
    sseEndpoint: view.sse_endpoint,  // with auth on, it carries the stream token (an EventSource sends no header)
    onConnection: (c) => {
      connection.textContent = connectionText[c] ?? "";
      connection.className = `connection ${c}`;
    },
    onChange: (next, message) => {
      if (closed) return;
      state = next;
      if (message) {
        if (message.persona_id && !names[message.persona_id]) {
          names[message.persona_id] = { name: message.persona_name, mode: message.mode };
        }
        const line = describe(message, names);
        log.push(line);
        logList.append(h("li", {}, line));
        if (message.type === "results") {
          const r = message.results;
          toast(`Job ${state.status}: ${r.successful} of ${r.total_personas} prompts generated`
            + (r.failed ? `, ${r.failed} failed` : ""), r.failed ? "error" : "info");
        }
      }
      save(jobKey(jobId), { state, log });
      paint();
      if (!message) showTimeline();
    },
  });
  // While the job runs, the history table follows along every few seconds.
  poll = setInterval(() => { if (!isFinished(state.status) && !document.hidden) showTimeline(); }, 4000);
}

// --- recent jobs ------------------------------------------------------------------------------------

async function renderJobs() {
  const refresh = h("button", { class: "small", id: "refresh-jobs", onclick: () => busy(refresh, paintJobs) }, "Refresh");
  const box = h("div", { id: "jobs" }, h("p", { class: "loading" }, "Loading jobs…"));
  main.replaceChildren(h("div", { class: "title-row" }, h("h1", {}, "Jobs"), refresh),
    h("p", { class: "lead" }, "Recent prompt generation jobs. Open one for its personas, results and event history."), box);
  let timer = null;
  cleanup = () => clearTimeout(timer);

  async function paintJobs() {
    clearTimeout(timer);
    try {
      const { jobs } = await client.listJobs(50);
      box.replaceChildren(jobs.length === 0
        ? h("p", { class: "empty card" }, "No jobs yet. ", h("a", { href: "#/" }, "Start a new generation"), ".")
        : tableWrap(h("table", { class: "jobs" },
            h("caption", { class: "sr-only" }, "Recent jobs, newest first"),
            h("thead", {}, h("tr", {}, ["Job", "Started", "Scenario", "Status", "Personas", "Successful", "Failed"].map((x, i) =>
              h("th", { scope: "col", class: i > 3 ? "num" : null }, x)))),
            h("tbody", {}, jobs.map((j) => h("tr", {},
              h("td", {}, h("a", { href: `#/jobs/${j.job_id}`, "aria-label": `Open job ${short(j.job_id)}` }, short(j.job_id))),
              h("td", {}, when(j.created_at)),
              h("td", { class: "title-cell" }, j.template_title || "—",
                j.retry_of ? h("span", { class: "muted" }, ` · retry of ${short(j.retry_of)}`) : null),
              h("td", {}, h("span", { class: `badge status-${j.status}` }, j.status)),
              h("td", { class: "num" }, String(j.total_personas)), h("td", { class: "num" }, String(j.completed)),
              h("td", { class: "num" }, String(j.failed))))))));
      if (jobs.some((j) => !isFinished(j.status))) timer = setTimeout(paintJobs, 2000);
    } catch (err) {
      box.replaceChildren(errorBox(err));
    }
  }
  await paintJobs();
}

// --- signing in and out (auth on) ----------------------------------------------------------------

// The server answered 401: no key, or a refused one (revoked, mistyped). Ask for one.
function askForKey(err) {
  if (signInNotice !== undefined) return;  // already asking (several calls fail at once)
  const refused = storedKey();
  try { sessionStorage.removeItem(KEY); } catch { /* private mode */ }
  signInNotice = refused ? `Your API key was refused: ${err.message}` : null;
  route();
}

// The tenant and scopes of the key in use, beside "Sign out" (nothing with auth off).
function showIdentity(who) {
  identity = who && who.auth ? who : null;
  signedInAs.hidden = !identity;
  signedInAs.textContent = identity ? `${identity.tenant} · ${identity.scopes.join(", ")}` : "";
  signedInAs.title = identity ? `Tenant ${identity.tenant}, key ${identity.key_id}` : "";
}

function renderSignIn() {
  signOutButton.hidden = true;
  showIdentity(null);
  const input = h("input", { id: "api-key", type: "password", required: true, autocomplete: "off",
                             spellcheck: "false", "aria-describedby": "api-key-help" });
  const error = h("div", { id: "sign-in-error" }, signInNotice ? errorBox(new Error(signInNotice)) : null);
  const submit = h("button", { type: "submit", id: "sign-in", class: "primary" }, "Sign in");
  const form = h("form", { class: "card", "aria-labelledby": "sign-in-title", onsubmit: (e) => {
    e.preventDefault();
    error.replaceChildren();
    busy(submit, async () => {
      const key = input.value.trim();
      let who;
      try {
        who = await createClient({ apiKey: key }).whoami();
      } catch (err) {
        error.replaceChildren(errorBox(err));
        input.focus();
        return;
      }
      try {
        sessionStorage.setItem(KEY, key);
      } catch {
        error.replaceChildren(errorBox(new Error("This browser does not let the page keep the key (sessionStorage).")));
        return;
      }
      signInNotice = undefined;
      showIdentity(who);
      route();
      toast(`Signed in to ${who.tenant}`);
    });
  } },
    h("label", { for: "api-key" }, "API key"),
    h("p", { id: "api-key-help", class: "muted small" },
      "A key starts with pgk_ (an operator makes one with ", h("code", {}, "promptgen keys create"),
      "). It is kept in this tab only, until you sign out or close it."),
    input,
    h("div", { class: "row" }, submit),
    error);
  main.replaceChildren(h("h1", { id: "sign-in-title" }, "Sign in"),
    h("p", { class: "lead" }, "This promptgen asks for an API key."), form);
  input.focus();
}

function signOut() {
  cleanup();
  cleanup = () => {};
  try {  // this tab's key and what it made with it (drafts, job states): another key may be another tenant
    for (const name of Object.keys(sessionStorage)) if (name.startsWith("promptgen.")) sessionStorage.removeItem(name);
  } catch { /* private mode */ }
  Object.assign(draft, { document: "", template: null, personas: [], modes: {} });
  signInNotice = null;
  route();
  toast("Signed out");
}

// --- routing ---------------------------------------------------------------------------------------

function route() {
  cleanup();
  cleanup = () => {};
  routeToken += 1;
  document.title = "promptgen";
  const hash = location.hash || "#/";
  const job = hash.match(/^#\/jobs\/([A-Za-z0-9_-]+)$/);
  for (const a of document.querySelectorAll("[data-nav]")) {
    if ((a.dataset.nav === "jobs") === hash.startsWith("#/jobs")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (signInNotice !== undefined) {
    renderSignIn();
    window.scrollTo(0, 0);
    return;
  }
  signOutButton.hidden = !storedKey();
  if (job) renderJob(job[1]);
  else if (hash === "#/jobs") renderJobs();
  else renderNew();
  main.focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

// Whether this gateway wants a key (a 401 shows the sign-in form), and whose the stored one is,
// before drawing the first page.
async function start() {
  try {
    showIdentity(await client.whoami());
  } catch { /* 401: askForKey has shown the sign-in form; other errors: each page shows its own */ }
  if (signInNotice === undefined) route();
}

window.addEventListener("hashchange", route);
signOutButton.addEventListener("click", signOut);
start();
