// The Myriad page: a thin client of the REST API under /api (the same endpoints, limits and
// checks as every other client). It only ever sends bytes the user picked; the server never
// reads a path on this page's behalf.
"use strict";

const PROFILE = "page";
const state = { key: null, session: null, hasLmm: false, canAsk: false, turns: [] };

function $(id) { return document.getElementById(id); }

function clientId() {
  // One random id per tab: the tab's profiles and sessions are its own on the server.
  let id = sessionStorage.getItem("myriad-client");
  if (!id) {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    id = "page-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("myriad-client", id);
  }
  return id;
}

function headers(extra) {
  const h = Object.assign({ "X-Myriad-Client": clientId() }, extra || {});
  const token = $("token").value.trim();
  if (token) { h["Authorization"] = "Bearer " + token; sessionStorage.setItem("myriad-token", token); }
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  if (!response.ok) {
    let detail = response.status + " " + response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function busy(text) {
  $("status").textContent = text || "";
  $("inspect-button").disabled = Boolean(text);
  $("ask-button").disabled = Boolean(text) || !state.canAsk || !state.session;
}

async function start() {
  $("token").value = sessionStorage.getItem("myriad-token") || "";
  const health = await (await fetch("/api/health")).json();
  state.hasLmm = health.lmm !== "none";
  const facts = health.answers !== "lmm";
  state.canAsk = state.hasLmm || facts;
  $("lmm-note").textContent = state.hasLmm
    ? (facts ? "Verdicts by the Myriad LMM (" + health.lmm + "); answers and follow-ups state the expert map's facts."
             : "Answers and follow-ups by the Myriad LMM (" + health.lmm + ").")
    : (facts ? "Expert-only: this server runs without the Myriad LMM (--lmm none); answers state the expert map's facts."
             : "Expert-only: this server runs without the Myriad LMM (--lmm none); follow-up questions are off.");
  $("token-box").hidden = !health.token_required;
  $("follow-up").disabled = !state.canAsk;
  busy("");
  try {
    const experts = await (await api("/api/experts")).json();
    const select = $("expert");
    for (const e of experts) {
      const option = document.createElement("option");
      option.value = e.name;
      option.textContent = e.members ? e.name + " (fused: " + e.modes.join(", ") + ")"
                                     : e.name + " (" + e.modes.join(", ") + ")";
      option.selected = e.name === health.default_expert;
      select.appendChild(option);
    }
  } catch (e) { showError(e.message); }
}

function listNormals() {
  const list = $("normal-list");
  list.replaceChildren();
  for (const f of $("normal-input").files) {
    const item = document.createElement("li");
    item.textContent = f.name;
    list.appendChild(item);
  }
}

function previewTest() {
  const file = $("test-input").files[0];
  const img = $("test-preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.hidden = !file;
  if (file) img.src = URL.createObjectURL(file);
}

function profileKey() {
  const files = Array.from($("normal-input").files, (f) => [f.name, f.size, f.lastModified]);
  return JSON.stringify([$("expert").value, $("expert-config").value.trim(), files]);
}

async function fitIfChanged() {
  const key = profileKey();
  if (key === state.key) return;
  const form = new FormData();
  for (const f of $("normal-input").files) form.append("files", f, f.name);
  form.append("expert", $("expert").value);
  form.append("config", $("expert-config").value.trim() || "{}");
  busy("Fitting the expert on the references\u2026");
  await api("/api/profiles/" + PROFILE, { method: "POST", body: form });
  state.key = key;
}

function renderAnswer(r) {
  const box = $("answer");
  box.replaceChildren();
  const verdict = document.createElement("p");
  verdict.className = "verdict";
  verdict.textContent = r.decision.toUpperCase() + ": calibrated score " + r.score.toFixed(2) +
    " (threshold " + r.threshold.toFixed(2) + "), expert " + r.expert + " (" + r.mode + ") says " + r.expert_decision + "." +
    (r.rule ? " Before the line's rules: " + r.decision_before_rules + " (" + r.rule + ")." : "");
  const answer = document.createElement("p");
  const degenerate = (r.answer_degenerate || []).length > 0;
  answer.textContent = !state.hasLmm ? "Expert-only answer: the server runs without the Myriad LMM."
    : degenerate ? "Myriad's answer withheld (" + r.answer_degenerate.join(", ") + "): see the expert's map below."
    : "Myriad: " + (r.answer.trim() || "(empty answer)");
  const timings = document.createElement("small");
  timings.textContent = Object.entries(r.timings_ms).map(([k, v]) => k + " " + Math.round(v) + " ms").join(", ");
  const nodes = [verdict, answer];
  if (r.grounded_answer && r.grounded_answer !== r.answer) {
    const grounded = document.createElement("p");
    grounded.className = "grounded";
    grounded.textContent = "From the expert's map: " + r.grounded_answer;
    nodes.push(grounded);
  }
  box.append(...nodes, timings);
  renderMembers(r.members);
  renderFindings(r.findings);
}

function findingsLine(f) {
  // One short line under the overlay: "top left · 0.4 % (small) · 1 region · severity low · likely a hole".
  if (f.verdict !== "anomalous") return "no defect found";
  if (f.located === false) return "not located by the expert's map (severity " + f.severity + ")";
  const percent = 100 * f.extent;
  const extent = percent < 0.1 ? "< 0.1 %" : (percent < 10 ? percent.toFixed(1) : percent.toFixed(0)) + " %";
  const parts = [f.region, extent + " (" + f.extent_bucket + ")",
                 f.count + (f.count === 1 ? " region" : " regions"), "severity " + f.severity];
  if (f.kind) parts.push("likely " + f.kind);
  return parts.join(" \u00b7 ");
}

function renderFindings(findings) {
  const line = $("findings");
  line.textContent = findings ? findingsLine(findings) : "";
  line.hidden = !findings;
}

function renderMembers(members) {
  // A fused expert: each member's calibrated score under the overlay ("patchcore 0.71 · global 0.22").
  const line = $("member-scores");
  line.replaceChildren();
  const entries = Object.entries(members || {});
  line.hidden = entries.length === 0;
  entries.forEach(([name, m], i) => {
    if (i > 0) line.append(" \u00b7 ");
    const item = document.createElement("span");
    item.className = m.anomalous ? "member fired" : "member";
    item.textContent = name + " " + m.score.toFixed(2);
    line.append(item);
  });
}

function renderChat() {
  const chat = $("chat");
  chat.replaceChildren();
  for (const t of state.turns) {
    const q = document.createElement("div");
    q.className = "user";
    q.textContent = t.question;
    const a = document.createElement("div");
    a.className = "assistant";
    const withheld = (t.answer_degenerate || []).length > 0;
    a.textContent = withheld ? "Myriad's answer withheld (" + t.answer_degenerate.join(", ") + ")." : t.answer;
    chat.append(q, a);
    if (t.grounded_answer && t.grounded_answer !== t.answer) {
      const g = document.createElement("div");
      g.className = "assistant grounded";
      g.textContent = "From the expert's map: " + t.grounded_answer;
      chat.append(g);
    }
  }
  chat.scrollTop = chat.scrollHeight;
}

async function inspect() {
  showError("");
  const file = $("test-input").files[0];
  if (!file) { showError("upload a test image first"); return; }
  try {
    await fitIfChanged();
    busy("Inspecting\u2026");
    const form = new FormData();
    form.append("file", file, file.name);
    const ask = $("question").value.trim();
    if (ask) form.append("ask", ask);
    const result = await (await api("/api/profiles/" + PROFILE + "/inspect", { method: "POST", body: form })).json();
    state.session = result.session_id;
    state.turns = [];
    const png = await (await api(result.overlay_url)).blob();
    const img = $("overlay-image");
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(png);
    img.hidden = false;
    renderAnswer(result);
    renderChat();
  } catch (e) {
    showError(e.message);
  } finally {
    busy("");
  }
}

async function ask() {
  showError("");
  const question = $("follow-up").value.trim();
  if (!question || !state.session) return;
  try {
    busy("Thinking\u2026");
    const reply = await (await api("/api/sessions/" + state.session + "/ask", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ question: question }),
    })).json();
    state.turns = reply.turns;
    $("follow-up").value = "";
    renderChat();
  } catch (e) {
    showError(e.message);
  } finally {
    busy("");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("normal-input").addEventListener("change", listNormals);
  $("test-input").addEventListener("change", previewTest);
  $("inspect-button").addEventListener("click", inspect);
  $("ask-button").addEventListener("click", ask);
  $("follow-up").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); ask(); }
  });
  start().catch((e) => showError("cannot reach the server: " + e.message));
});
