// The chat page's script: multi-turn history kept in the page (and in localStorage across reloads); every request
// sends it whole (the server is stateless). Replies are rendered as Markdown by marked, sanitized by DOMPurify;
// raw HTML in model text is shown as text, images as their alt text (nothing remote is ever loaded).
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), input = $("input"), statusLine = $("status");
const sendBtn = $("send"), stopBtn = $("stop"), regenBtn = $("regenerate"), editBtn = $("edit");
const SAMPLING = ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                  "frequency_penalty", "max_tokens", "seed"];
const STORE = "bloomchat.history", KEY_STORE = "bloomchat.apiKey";

let history = [];        // [{role: "user" | "assistant", content}], what the next request sends
let model = null;
let controller = null;   // the AbortController of the request in flight, if any
let epoch = 0;           // bumped by Reset: a request from an older epoch changes nothing when it ends

// ---- Markdown, safely ----

const escapeHtml = (s) => s.replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                                          "'": "&#39;"})[c]);
marked.use({
  gfm: true,
  breaks: true,
  renderer: {
    html: ({text}) => escapeHtml(text),                           // model-written HTML is text, never markup
    image: ({text}) => escapeHtml(text ? `[image: ${text}]` : "[image]"),  // no remote images
  },
});
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
});
const PURIFY = {USE_PROFILES: {html: true}, FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea",
                "select", "video", "audio", "picture", "source", "iframe", "object", "embed"]};

function setMarkdown(el, text) {
  el.innerHTML = DOMPurify.sanitize(marked.parse(text), PURIFY);
}

// ---- the screen ----

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (role === "assistant") setMarkdown(div, text); else div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}
function note(text) {
  const d = document.createElement("div");
  d.className = "note";
  d.textContent = text;
  log.appendChild(d);
  log.scrollTop = log.scrollHeight;
  return d;
}
function render() {  // the whole log from the history (notes are not kept)
  log.replaceChildren();
  for (const m of history) bubble(m.role, m.content);
}
function save() {
  try { localStorage.setItem(STORE, JSON.stringify(history)); } catch (e) { /* storage full or off: not kept */ }
}
function restore() {
  try {
    const h = JSON.parse(localStorage.getItem(STORE) || "[]");
    const ok = Array.isArray(h) && h.every((m, i) => m && typeof m.content === "string"
                                            && m.role === (i % 2 ? "assistant" : "user"));
    history = ok ? h : [];
  } catch (e) { history = []; }
}
function setBusy(busy) {
  sendBtn.disabled = busy; stopBtn.disabled = !busy;
  const last = history[history.length - 1];
  regenBtn.disabled = busy || !last || last.role !== "assistant";
  editBtn.disabled = busy || !history.some((m) => m.role === "user");
}

// ---- the server ----

function headers(json) {
  const h = json ? {"Content-Type": "application/json"} : {};
  const key = $("api_key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}
async function errorOf(r) {
  const err = await r.json().catch(() => null);
  const msg = (err && err.error && err.error.message) || r.statusText || "HTTP " + r.status;
  return r.status === 401 ? msg + " (enter the server's API key in the box on the right)" : msg;
}
function num(id) { const v = $(id).value; return v === "" ? undefined : Number(v); }

async function loadModel() {
  const r = await fetch("/v1/models", {headers: headers(false)});
  if (!r.ok) { note("error: " + await errorOf(r)); if (r.status === 401) $("api_key").focus(); return; }
  model = (await r.json()).data[0].id;
  $("title").textContent = "chat with " + model;
  const p = await fetch("/props", {headers: headers(false)}).catch(() => null);
  if (!p || !p.ok) return;  // an older server without /props: the fields stay empty
  const d = (await p.json()).defaults || {};
  const shown = {...d, max_tokens: d.max_new_tokens, temperature: d.do_sample === false ? 0 : d.temperature,
                 seed: d.seed ?? "random"};
  for (const name of SAMPLING) if (shown[name] !== undefined && shown[name] !== null) $(name).placeholder = shown[name];
}

// One request for the reply to the history as it is (its last message is the user's): "ok" when the reply joined the
// history (also a stopped one), "failed" when it did not (the caller puts things back), "reset" after a Reset.
async function complete() {
  const mine = new AbortController(), myEpoch = epoch;
  controller = mine;
  setBusy(true);
  const out = bubble("assistant", "");
  const body = {model, messages: history, stream: true, stream_options: {include_usage: true}};
  for (const name of SAMPLING) body[name] = num(name);
  let reply = "", finish = null;
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST", headers: headers(true), body: JSON.stringify(body),
                                                   signal: mine.signal});
    if (!r.ok) throw new Error(await errorOf(r));
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += decoder.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, i).trim(); buf = buf.slice(i + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const ev = JSON.parse(line.slice(6));
        if (ev.error) throw new Error(ev.error.message);
        const c = ev.choices && ev.choices[0];
        if (c && c.delta && c.delta.content) {
          reply += c.delta.content; setMarkdown(out, reply); log.scrollTop = log.scrollHeight;
        }
        if (c && c.finish_reason) finish = c.finish_reason;
        if (ev.usage) statusLine.textContent =
          `${ev.usage.completion_tokens} tokens, prompt ${ev.usage.prompt_tokens}, finish: ${finish}`;
      }
    }
    if (myEpoch !== epoch) return "reset";
    history.push({role: "assistant", content: reply});
    if (finish === "length") note("[reply cut at max_tokens]");
    return "ok";
  } catch (e) {
    if (myEpoch !== epoch) return "reset";  // Reset while streaming: the page is already clear, nothing goes back
    if (e.name === "AbortError") {  // Stop: the reply so far stays
      history.push({role: "assistant", content: reply}); note("[reply stopped]"); return "ok";
    }
    out.remove(); note("error: " + e.message);
    return "failed";
  } finally {
    if (controller === mine) controller = null;
    if (myEpoch === epoch) { save(); setBusy(!!controller); }
  }
}

async function send(text) {
  history.push({role: "user", content: text});
  const userBubble = bubble("user", text);
  save();
  if ((await complete()) !== "failed") return;
  history.pop(); userBubble.remove(); save(); setBusy(false);  // history and screen agree: the exchange is gone
  if (!input.value) input.value = text;                         // and the typed text is back in the box
}

async function regenerate() {
  if (controller || !history.length || history[history.length - 1].role !== "assistant") return;
  const old = history.pop();
  render(); save();
  if ((await complete()) !== "failed") return;
  history.push(old); bubble("assistant", old.content); save(); setBusy(false);  // the old reply is back
}

function editLast() {
  if (controller) return;
  let i = history.length - 1;
  while (i >= 0 && history[i].role !== "user") i--;
  if (i < 0) return;
  input.value = history[i].content;
  history = history.slice(0, i);
  render(); save(); setBusy(false);
  input.focus();
}

function reset() {
  epoch += 1;
  if (controller) controller.abort();
  controller = null;
  history = []; log.replaceChildren(); statusLine.textContent = "";
  save(); setBusy(false);
}

// ---- wiring ----

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || controller) return;
  input.value = "";
  send(text);
});
input.addEventListener("keydown", (e) => {
  if (e.isComposing || e.keyCode === 229) return;  // an input method (Chinese, Japanese) is composing: not a send
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
});
stopBtn.addEventListener("click", () => controller && controller.abort());
regenBtn.addEventListener("click", regenerate);
editBtn.addEventListener("click", editLast);
$("reset").addEventListener("click", reset);
$("api_key").value = localStorage.getItem(KEY_STORE) || "";
$("api_key").addEventListener("change", () => {
  localStorage.setItem(KEY_STORE, $("api_key").value.trim());
  if (!model) loadModel();
});

restore();
render();
setBusy(false);
loadModel();
