"use strict";
// Everything shown here came from visitors of the tunnel: it is only ever
// put in the page with textContent, never parsed as HTML.

const state = { capacity: 1000, selected: null, rows: new Map(), detailTimer: null, tunnels: [],
                detail: null, shows: () => true };
// A tunnel badge on each row and in the detail only when there is a choice.
const several = () => state.tunnels.length > 1;
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

async function api(path, options) {
  const resp = await fetch(path, options);
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  if (!resp.ok) throw new Error((body && body.error) || resp.status + " " + resp.statusText);
  return body;
}

function statusClass(s) {
  if (s.state === "failed" && !s.status) return "sfail";
  if (!s.status) return "spending";
  return "s" + String(s.status)[0];
}

function statusText(s) {
  if (s.status) return String(s.status);
  return s.state === "failed" ? "ERR" : "…";
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "";
  return ms < 1000 ? ms.toFixed(ms < 10 ? 1 : 0) + " ms" : (ms / 1000).toFixed(2) + " s";
}

function fmtBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}

// ---- the list -------------------------------------------------------------

function renderRow(li, s) {
  const path = el("span", "path");
  path.title = s.path;
  if (several()) {
    const badge = el("span", "tunnel-badge", s.tunnel);
    badge.title = "tunnel " + s.tunnel + " → " + s.target;
    path.append(badge);
  }
  if (s.replay_of) {
    const mark = el("span", "replay-mark", "↻ #" + s.replay_of);
    mark.title = "replay of #" + s.replay_of;
    path.append(mark);
  }
  path.append(s.path);
  const when = new Date(s.started).toLocaleTimeString();
  li.summary = s;
  li.hidden = !state.shows(s);
  li.replaceChildren(
    el("span", "status " + statusClass(s), statusText(s)),
    el("span", "method", s.method),
    path,
    el("span", "meta", [fmtMs(s.total_ms ?? s.duration_ms), when].filter(Boolean).join(" · ")),
  );
  li.title = s.error || "";
}

function upsert(s) {
  let li = state.rows.get(s.id);
  if (!li) {
    li = el("li");
    li.dataset.id = s.id;
    li.addEventListener("click", () => select(s.id));
    state.rows.set(s.id, li);
    // Newest first: before the first row with a smaller id.
    const list = $("list");
    let before = null;
    for (const row of list.children) {
      if (Number(row.dataset.id) < s.id) { before = row; break; }
    }
    list.insertBefore(li, before);
  }
  if (s.id === state.selected) li.classList.add("selected");
  renderRow(li, s);
  trim();
  refreshCount();
  if (s.id === state.selected) scheduleDetail();
}

function remove(id) {
  const li = state.rows.get(id);
  if (li) { li.remove(); state.rows.delete(id); }
  refreshCount();
}

function trim() {
  const list = $("list");
  while (list.children.length > state.capacity) remove(Number(list.lastElementChild.dataset.id));
}

function refreshCount() {
  const n = state.rows.size;
  let shown = 0;
  for (const li of state.rows.values()) if (!li.hidden) shown++;
  $("count").textContent = (shown < n ? shown + " shown of " + n : n) + " / " + state.capacity;
  $("empty").hidden = n > 0;
  $("filtered").hidden = n === 0 || shown > 0;
}

// The filter box and the assets switch: rows that do not match are hidden,
// not removed, so clearing the filter shows them again.
function applyFilter() {
  const matches = parseFilter($("filter").value);
  const hideAssets = $("hide-assets").checked;
  state.shows = (s) => matches(s) && !(hideAssets && isAsset(s));
  for (const li of state.rows.values()) li.hidden = !state.shows(li.summary);
  refreshCount();
}

async function loadList() {
  const list = await api("/api/requests");
  const listed = new Set(list.map((s) => s.id));
  const newest = list.length ? list[0].id : 0;
  // Keep rows newer than the snapshot: their events may have come first.
  for (const id of [...state.rows.keys()]) {
    if (!listed.has(id) && id <= newest) remove(id);
  }
  for (const s of list.slice().reverse()) upsert(s);
  if (state.selected !== null && !listed.has(state.selected) && !state.rows.has(state.selected)) showNothing();
}

// ---- the detail -----------------------------------------------------------

function select(id) {
  $("editor").hidden = true;
  $("curl-box").hidden = true;
  const old = state.rows.get(state.selected);
  if (old) old.classList.remove("selected");
  state.selected = id;
  const li = state.rows.get(id);
  if (li) li.classList.add("selected");
  loadDetail(id, true);
}

function scheduleDetail() {
  // Streams update often; refresh the open exchange at most every 300 ms.
  if (state.detailTimer) return;
  state.detailTimer = setTimeout(() => {
    state.detailTimer = null;
    if (state.selected !== null) loadDetail(state.selected, false);
  }, 300);
}

async function loadDetail(id, fresh) {
  try {
    const d = await api("/api/requests/" + id);
    if (id === state.selected) renderDetail(d, fresh);
  } catch (err) {
    if (id === state.selected) showNothing("This request has left the list.");
  }
}

function showNothing(text) {
  state.detail = null;
  $("detail").hidden = true;
  $("placeholder").hidden = false;
  $("placeholder").textContent = text || "Select a request to see its headers and bodies.";
}

function renderDetail(d, fresh) {
  state.detail = d;
  const detail = $("detail");
  // A refresh keeps the replay message (and its link) where it was.
  const keepMsg = fresh ? null : $("replay-msg");
  $("placeholder").hidden = true;
  detail.hidden = false;

  const title = el("div", "title");
  title.append(el("span", "status " + statusClass(d), statusText(d)), el("h2", null, d.method + " " + d.path));
  if (several()) title.append(el("span", "tunnel-badge", d.tunnel));
  const sub = [new Date(d.started).toLocaleString(), "#" + d.id];
  if (several()) sub.push("tunnel " + d.tunnel + " → " + d.target);
  if (d.replay_of) sub.push("replay of #" + d.replay_of);
  if (d.duration_ms !== null) sub.push("response after " + fmtMs(d.duration_ms));
  if (d.total_ms !== null) sub.push("done in " + fmtMs(d.total_ms));
  const nodes = [title, el("div", "sub", sub.join(" · "))];
  if (d.error) nodes.push(el("div", "error", d.error));

  const actions = el("div", "actions");
  const replay = el("button", "primary", "Replay");
  replay.id = "replay";
  replay.type = "button";
  replay.disabled = !d.replay.allowed;
  replay.title = d.replay.allowed ? "Send this request to " + d.target + " again" : d.replay.reason;
  replay.addEventListener("click", () => doReplay(d.id));
  const msg = keepMsg || el("span");
  msg.id = "replay-msg";
  if (!d.replay.allowed && !keepMsg) { msg.className = "muted"; msg.textContent = d.replay.reason; }
  const edit = button("edit", "Edit and replay", () => openEditor());
  edit.disabled = d.upgraded;
  const curl = button("copy-curl", "Copy as curl", () => copyCurl());
  actions.append(replay, edit, curl, msg);
  nodes.push(actions);
  $("detail-head").replaceChildren(...nodes);

  const parts = [part("Request", d.request.headers, d.request.body, "request")];
  if (d.response) parts.push(part("Response", d.response.headers, d.response.body, "response", d.upgraded));
  else parts.push(el("p", "muted", d.state === "waiting" ? "Waiting for the response…" : "No response."));
  $("detail-body").replaceChildren(...parts);
}

function button(id, text, onClick) {
  const b = el("button", null, text);
  b.id = id;
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

// ---- edit and replay, copy as curl ---------------------------------------

function openEditor() {
  const d = state.detail;
  if (!d) return;
  const fields = editorText(d);
  $("edit-method").value = fields.method;
  $("edit-path").value = fields.path;
  $("edit-headers").value = fields.headers;
  $("edit-body").value = fields.body;
  $("edit-body").dataset.base64 = fields.base64 ? "yes" : "";
  $("edit-body-label").textContent = fields.base64 ? "Body (binary, as base64)" : "Body";
  $("editor").dataset.id = d.id;
  $("editor").hidden = false;
}

function sendEdited() {
  const msg = $("replay-msg");
  let edits;
  try {
    edits = editsFrom({
      method: $("edit-method").value,
      path: $("edit-path").value,
      headers: $("edit-headers").value,
      body: $("edit-body").value,
      base64: $("edit-body").dataset.base64 === "yes",
    });
  } catch (err) {
    msg.className = "err";
    msg.textContent = err.message;
    return;
  }
  doReplay(Number($("editor").dataset.id), edits);
}

function tunnelUrl(d) {
  const tunnel = state.tunnels.find((t) => t.name === d.tunnel) || state.tunnels[0];
  if (tunnel) return tunnel.public_url;
  return /^https?:\/\//.test(d.target) ? d.target : "http://" + d.target;
}

async function copyCurl() {
  const d = state.detail;
  if (!d) return;
  const text = curlCommand(d, tunnelUrl(d));
  $("curl").textContent = text;
  $("curl-box").hidden = false;
  const msg = $("replay-msg");
  try {
    await navigator.clipboard.writeText(text);
    msg.className = "muted";
    msg.textContent = "Copied the curl command.";
  } catch (_) {
    msg.className = "muted";
    msg.textContent = "Select the command below to copy it.";
  }
}

function part(name, headers, body, id, upgraded) {
  const section = el("section");
  section.id = id;
  section.append(el("h3", null, name + " headers"));
  const table = el("table", "headers");
  for (const [n, v] of headers) {
    const tr = el("tr");
    tr.append(el("td", "name", n), el("td", "value", v));
    table.append(tr);
  }
  section.append(table);
  if (id === "response" && upgraded) {
    section.append(el("div", "body muted", "Switched protocols: the connection's bytes are not captured."));
  } else {
    section.append(el("h3", null, name + " body"), bodyView(body));
  }
  return section;
}

function bodyView(b) {
  const box = el("div", "body");
  if (b.note) box.append(el("div", "note", b.note));
  if (b.state === "streaming") box.append(el("div", "muted", "Still streaming: " + fmtBytes(b.size) + " so far."));
  if (b.drained) box.append(el("div", "note", "The local service did not read this body to its end; it is shown as the visitor sent it."));
  if (b.state === "abandoned") box.append(el("div", "muted", "Not read to its end (" + fmtBytes(b.size) + " passed)."));
  if (b.state === "failed") box.append(el("div", "error", "Failed: " + (b.error || "")));
  if (b.kind === "empty") {
    if (b.state !== "streaming") box.append(el("div", "muted", "No body."));
  } else if (b.kind === "text") {
    box.append(el("pre", "text", pretty(b.text, b.content_type)));
  } else {
    box.append(el("div", "muted", "Binary, " + fmtBytes(b.size) + (b.content_type ? " of " + b.content_type : "") + ":"));
    box.append(el("pre", "hex", b.hexdump));
  }
  return box;
}

function pretty(text, type) {
  if (type && /json/i.test(type)) {
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* shown as sent */ }
  }
  return text;
}

async function doReplay(id, edits) {
  const msg = $("replay-msg");
  msg.className = "muted";
  msg.textContent = "Replaying…";
  const options = { method: "POST" };
  if (edits) {
    options.headers = { "content-type": "application/json" };
    options.body = JSON.stringify(edits);
  }
  try {
    const r = await api("/api/requests/" + id + "/replay", options);
    msg.className = "";
    msg.textContent = "Sent again as ";
    const link = el("a", null, "#" + r.id);
    link.addEventListener("click", () => select(r.id));
    msg.append(link);
  } catch (err) {
    msg.className = "err";
    msg.textContent = err.message;
  }
}

// ---- live feed ------------------------------------------------------------

function connect() {
  const feed = new EventSource("/api/events");
  const on = (name, f) => feed.addEventListener(name, (e) => f(JSON.parse(e.data)));
  on("ready", () => { setLive(true); loadList().catch(() => setLive(false)); });
  on("update", upsert);
  on("evict", (e) => remove(e.id));
  on("clear", () => { for (const id of [...state.rows.keys()]) remove(id); showNothing(); });
  on("resync", () => loadList());
  on("tunnels", () => loadStatus().catch(() => {}));
  feed.onerror = () => setLive(false);
}

function setLive(on) {
  $("live").classList.toggle("on", on);
  $("live").textContent = on ? "live" : "reconnecting…";
}

// The session's tunnels, each "public URL → target" (named when several);
// a reconnect sends `tunnels` and they are shown again with their new URLs.
async function loadStatus() {
  const s = await api("/api/status");
  state.capacity = s.capacity;
  const had = several();
  state.tunnels = s.tunnels || [];
  const lines = state.tunnels.map((t) => {
    const line = el("span", "one", (several() ? t.name + ": " : "") + t.public_url + " → " + t.target);
    line.dataset.name = t.name;
    return line;
  });
  $("tunnel").replaceChildren(...lines);
  // Rows and detail gain or lose their tunnel badges.
  if (had !== several()) {
    for (const id of [...state.rows.keys()]) remove(id);
    await loadList();
    if (state.selected !== null) loadDetail(state.selected, false);
  }
}

async function start() {
  try {
    await loadStatus();
  } catch (_) { /* the feed says whether we are connected */ }
  refreshCount();
  $("clear").addEventListener("click", () => api("/api/requests", { method: "DELETE" }).catch(() => {}));
  $("filter").addEventListener("input", applyFilter);
  $("hide-assets").addEventListener("change", applyFilter);
  $("edit-send").addEventListener("click", sendEdited);
  $("edit-cancel").addEventListener("click", () => { $("editor").hidden = true; });
  applyFilter();
  connect();
}

start();
