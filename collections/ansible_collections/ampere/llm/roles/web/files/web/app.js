// app.js: the chat page: sends the conversation to POST /generate, renders the SSE stream token by
// token, and says in plain words what went wrong. Model and user text only ever enter the page as
// text nodes (textContent / appendData), never as HTML.
import { SSEParser } from "./sse.js";

const $ = (id) => document.getElementById(id);
const els = {
  log: $("log"), empty: $("empty"), notice: $("notice"), form: $("form"), prompt: $("prompt"),
  send: $("send"), stop: $("stop"), clear: $("clear"), settings: $("settings"),
  maxTokens: $("max-tokens"), temperature: $("temperature"), apiKey: $("api-key"),
  nodeStatus: $("node-status"), nodeText: $("node-text"), template: $("turn-template"),
};

// The API key lives in sessionStorage only: it leaves with the tab, never lands on disk.
const KEY_STORE = "ampere-llm.api-key";
const SETTINGS_STORE = "ampere-llm.settings";

const conversation = [];  // [{role, content}] as sent in `messages`
let running = null;       // the AbortController of the answer being streamed
let epoch = 0;            // bumped by Clear: an answer that ends after it belongs to nothing

// ---- rendering -------------------------------------------------------------------------------

function addTurn(role) {
  const node = els.template.content.firstElementChild.cloneNode(true);
  node.classList.add(role);
  node.querySelector(".who").textContent = role === "user" ? "You" : "Model";
  els.empty.hidden = true;
  els.log.append(node);
  return { node, body: node.querySelector(".body"), meta: node.querySelector(".meta") };
}

// Split text into prose and ``` fenced code blocks (an unclosed fence is code still being written).
function blocks(text) {
  return text.split("```").flatMap((part, i) => {
    if (i % 2 === 0) return part.trim() ? [{ code: false, text: part.replace(/^\n+|\s+$/g, "") }] : [];
    const nl = part.indexOf("\n");
    const head = nl < 0 ? "" : part.slice(0, nl).trim();
    const lang = /^[\w+#.-]{1,24}$/.test(head) ? head : "";
    const body = nl < 0 ? part : part.slice(head && !lang ? 0 : nl + 1);
    return [{ code: true, lang, text: body.replace(/\n$/, "") }];
  });
}

// Bring `el` up to date with `text`, touching only what changed: a growing answer appends to its
// last text node, so screen readers and selections are not disturbed on every token.
function renderText(el, text) {
  const want = blocks(text);
  want.forEach((b, i) => {
    let node = el.children[i];
    const tag = b.code ? "PRE" : "P";
    if (!node || node.tagName !== tag || (b.code && node.dataset.lang !== b.lang)) {
      const fresh = document.createElement(tag);
      if (b.code) {
        fresh.dataset.lang = b.lang;
        fresh.append(document.createElement("code"));
        if (b.lang) fresh.setAttribute("aria-label", `${b.lang} code`);
      }
      node ? node.replaceWith(fresh) : el.append(fresh);
      node = fresh;
    }
    const target = b.code ? node.firstChild : node;
    const have = target.textContent;
    if (have === b.text) return;
    if (have && b.text.startsWith(have) && target.lastChild?.nodeType === Node.TEXT_NODE) {
      target.lastChild.appendData(b.text.slice(have.length));
    } else {
      target.textContent = b.text;
    }
  });
  while (el.children.length > want.length) el.lastElementChild.remove();
}

// The log follows the newest text while the reader is at the bottom; scrolling up to read stops
// that until they come back down (also across resizes, e.g. a phone's keyboard opening).
let stick = true;
const nearBottom = () => els.log.scrollHeight - els.log.scrollTop - els.log.clientHeight < 80;
function followBottom() {
  if (stick) els.log.scrollTop = els.log.scrollHeight;
}
els.log.addEventListener("scroll", () => { stick = nearBottom(); });
new ResizeObserver(followBottom).observe(els.log);

function showNotice(text) {
  els.notice.textContent = text;
  els.notice.hidden = false;
}
function hideNotice() {
  els.notice.hidden = true;
  els.notice.textContent = "";
}

// The header says which node answered last: behind a load balancer it changes from answer to answer.
function setNode(name, state, words = state) {
  els.nodeStatus.dataset.state = state;
  els.nodeText.textContent = name ? `Node ${name} · ${words}` : words;
}

function setRunning(controller) {
  running = controller;
  els.send.disabled = !!controller;
  els.stop.disabled = !controller;
  els.log.setAttribute("aria-busy", controller ? "true" : "false");
}

// ---- talking to the node ---------------------------------------------------------------------

function readSettings() {
  for (const input of [els.maxTokens, els.temperature]) {
    if (!input.checkValidity() || input.value === "") {
      els.settings.open = true;
      input.focus();
      const label = input === els.maxTokens ? "Max tokens must be a whole number" : "Temperature must be a number";
      throw new Error(`${label} from ${input.min} to ${input.max}.`);
    }
  }
  return { max_tokens: Number(els.maxTokens.value), temperature: Number(els.temperature.value) };
}

// POST the conversation and stream the answer; `onText(text)` sees the text so far after every
// network chunk. Resolves (never rejects) with what happened: text, node, timings, problem, stopped.
async function generate(messages, settings, controller, onText) {
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = `Bearer ${key}`;
  const out = { text: "", tokens: 0, node: null, done: null, problem: null, stopped: false,
                sentAt: performance.now(), firstAt: null, lastAt: null };
  let res;
  try {
    res = await fetch("generate", { method: "POST", headers, signal: controller.signal,
                                    body: JSON.stringify({ messages, ...settings, stream: true }) });
  } catch {
    if (controller.signal.aborted) out.stopped = true;
    else out.problem = { kind: "unreachable" };
    return out;
  }
  out.node = res.headers.get("X-Served-By");
  if (!res.ok || !(res.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
    out.problem = await httpProblem(res);
    return out;
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const ev of parser.push(value)) {
        let data;
        try { data = JSON.parse(ev.data); } catch { continue; }  // not ours: skip, don't die
        if (ev.event === "message" && typeof data.token === "string") {
          out.text += data.token;
          out.tokens += 1;
          out.lastAt = performance.now();
          out.firstAt ??= out.lastAt;
        } else if (ev.event === "done") {
          out.done = data;
        } else if (ev.event === "error") {
          out.problem = { kind: "stream-error", message: data?.error?.message || "" };
        }
      }
      onText(out.text);
    }
  } catch {
    if (controller.signal.aborted) out.stopped = true;
    else out.problem = { kind: "cut" };
    return out;
  }
  if (!out.done && !out.problem) out.problem = { kind: "cut" };
  return out;
}

async function httpProblem(res) {
  let type = "";
  let message = "";
  try {
    const body = await res.json();
    type = String(body?.error?.type ?? "");
    message = String(body?.error?.message ?? "");
  } catch { /* an HTML error page from something in between: the status says enough */ }
  const retry = Number.parseInt(res.headers.get("Retry-After") || "", 10);
  return { kind: "http", status: res.status, type, message, retryAfter: Number.isFinite(retry) ? retry : null };
}

// The problem in plain words, and what the user can do about it.
function describe(p) {
  const wait = (s, fallback) => (s != null ? `Try again in ${s} s.` : fallback);
  switch (p.kind) {
    case "unreachable":
      return "Can't reach the node. Check the network or the load balancer, then send again.";
    case "cut":
      return "The answer was cut off: the connection closed before the end. What arrived is kept.";
    case "stream-error":
      return `The model stopped with an error${p.message ? `: ${p.message}` : "."}`;
  }
  if (p.status === 503 && p.type === "not_ready") return `The node is still loading its model. ${wait(p.retryAfter, "Try again shortly.")}`;
  if (p.status === 503 && p.type === "draining") return "This node is shutting down. Send again: the load balancer will pick another node.";
  if (p.status === 503) return `The node is busy: every slot and queue place is taken. ${wait(p.retryAfter, "Try again in a few seconds.")}`;
  if (p.status === 401) return sessionStorage.getItem(KEY_STORE)
    ? "The node did not accept the API key. Check it under Settings and send again."
    : "This node needs an API key. Enter it under Settings and send again.";
  if (p.status === 429) return `Too many requests from your address. ${wait(p.retryAfter, "Wait a moment and send again.")}`;
  if (p.status === 413) return "The conversation is too long for this node. Clear it and start again.";
  if (p.status === 400) return `The node refused the request${p.message ? `: ${p.message}` : "."}`;
  if (p.status === 502 || p.status === 504) return "The node's model server is not answering; it may be restarting. Try again shortly.";
  return `The node answered ${p.status}${p.message ? `: ${p.message}` : "."}`;
}

function stats(r) {
  const parts = [];
  const t = r.done?.timings;
  const ttft = t?.ttft_ms ?? (r.firstAt != null ? r.firstAt - r.sentAt : null);
  let tps = t?.tokens_per_second;
  if (tps == null && r.tokens > 1 && r.lastAt > r.firstAt) tps = ((r.tokens - 1) * 1000) / (r.lastAt - r.firstAt);
  const tokens = r.done?.usage?.completion_tokens ?? r.tokens;
  if (t?.queue_ms >= 100) parts.push(`queued ${(t.queue_ms / 1000).toFixed(1)} s`);
  if (ttft != null) parts.push(`first token ${Math.round(ttft)} ms`);
  if (tps != null) parts.push(`${tps.toFixed(1)} tok/s`);
  parts.push(`${tokens} token${tokens === 1 ? "" : "s"}`);
  if (r.node) parts.push(`node ${r.node}`);
  if (r.stopped) parts.push("stopped");
  else if (r.done?.finish_reason === "length") parts.push("hit the max tokens limit");
  return parts;
}

// One span per figure, so a narrow screen wraps between figures, never inside one.
function showStats(meta, parts) {
  meta.replaceChildren();
  parts.forEach((text, i) => {
    if (i) meta.append(" · ");
    const span = document.createElement("span");
    span.textContent = text;
    meta.append(span);
  });
}

// ---- the conversation ------------------------------------------------------------------------

async function send() {
  const text = els.prompt.value;
  if (!text.trim() || running) return;
  hideNotice();
  let settings;
  try { settings = readSettings(); } catch (e) { showNotice(e.message); return; }

  const messages = [...conversation, { role: "user", content: text }];
  const user = addTurn("user");
  renderText(user.body, text);
  const answer = addTurn("assistant");
  answer.node.classList.add("pending");
  answer.meta.textContent = "Waiting for the first token…";
  els.prompt.value = "";
  stick = true;
  followBottom();

  const controller = new AbortController();
  const mine = epoch;
  setRunning(controller);
  const r = await generate(messages, settings, controller, (soFar) => {
    if (soFar) answer.node.classList.remove("pending");
    renderText(answer.body, soFar);
    followBottom();
  });
  setRunning(null);
  if (mine !== epoch) return;  // cleared while it streamed: nothing to keep
  if (r.node) setNode(r.node, r.problem?.status === 503 ? "busy" : "ready");

  if (!r.text && (r.problem || r.stopped)) {
    // Nothing came back: undo the turn and give the words back, so nothing typed is lost.
    user.node.remove();
    answer.node.remove();
    els.empty.hidden = els.log.querySelector(".turn") !== null;
    if (!els.prompt.value) els.prompt.value = text;
    if (r.problem) {
      showNotice(describe(r.problem));
      if (r.problem.status === 401) { els.settings.open = true; els.apiKey.focus(); return; }
    }
    els.prompt.focus();
    return;
  }
  answer.node.classList.remove("pending");
  conversation.push({ role: "user", content: text }, { role: "assistant", content: r.text });
  showStats(answer.meta, stats(r));
  if (r.problem) {
    answer.node.classList.add("cut");
    const note = document.createElement("p");
    note.className = "problem";
    note.textContent = describe(r.problem);
    answer.node.append(note);
  }
  followBottom();
  if (!els.settings.contains(document.activeElement)) els.prompt.focus();
}

function stop() {
  running?.abort();
}

function clear() {
  epoch += 1;
  stop();
  conversation.length = 0;
  els.log.querySelectorAll(".turn").forEach((t) => t.remove());
  els.empty.hidden = false;
  hideNotice();
  els.prompt.focus();
}

async function probeNode() {
  try {
    const res = await fetch("readyz", { cache: "no-store" });
    const name = res.headers.get("X-Served-By");
    if (res.ok) setNode(name, "ready");
    else setNode(name, "loading", res.status === 503 ? "not ready yet" : `answered ${res.status}`);
  } catch {
    setNode(null, "down", "Node not reachable");
  }
}

// ---- wiring ----------------------------------------------------------------------------------

function restoreSettings() {
  try {
    const saved = JSON.parse(localStorage.getItem(SETTINGS_STORE) || "{}");
    if (saved.max_tokens) els.maxTokens.value = saved.max_tokens;
    if (saved.temperature != null) els.temperature.value = saved.temperature;
  } catch { /* a damaged entry: keep the defaults */ }
  els.apiKey.value = sessionStorage.getItem(KEY_STORE) || "";
}

function saveSettings() {
  localStorage.setItem(SETTINGS_STORE, JSON.stringify({ max_tokens: els.maxTokens.value, temperature: els.temperature.value }));
}

els.form.addEventListener("submit", (e) => { e.preventDefault(); send(); });
els.prompt.addEventListener("keydown", (e) => {
  // Enter sends; Shift+Enter is a new line; an IME composing text keeps its Enter.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
    e.preventDefault();
    if (!running) els.form.requestSubmit();
  }
});
document.addEventListener("keydown", (e) => { if (e.key === "Escape" && running) { e.preventDefault(); stop(); } });
els.stop.addEventListener("click", () => { stop(); els.prompt.focus(); });
els.clear.addEventListener("click", clear);
els.maxTokens.addEventListener("change", saveSettings);
els.temperature.addEventListener("change", saveSettings);
els.apiKey.addEventListener("input", () => {
  const key = els.apiKey.value.trim();
  key ? sessionStorage.setItem(KEY_STORE, key) : sessionStorage.removeItem(KEY_STORE);
});

restoreSettings();
probeNode();
els.prompt.focus();
