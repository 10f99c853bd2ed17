"use strict";
// The Cryptun server dashboard. It polls /api/dashboard once a second and
// updates the page in place. Every value from the server is put in the
// page with textContent, never parsed as HTML: subdomains, key names and
// addresses come from clients and operators, not from this page.

const TOKEN_KEY = "cryptun-admin-token";
const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);
const state = { timer: null, polling: false, tunnels: new Map(), clients: new Map(), nodes: new Map() };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// ---- formatting -----------------------------------------------------------

function fmtBytes(n) {
  if (n < 1024) return n + " B";
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return v.toFixed(v < 10 ? 1 : 0) + " " + units[i];
}

function fmtRate(r) {
  if (!r) return "0/s";
  return (r < 10 ? r.toFixed(1) : Math.round(r)) + "/s";
}

function fmtDuration(secs) {
  secs = Math.max(0, Math.floor(secs));
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
  const m = Math.floor(secs / 60) % 60, s = secs % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + s + "s";
  return s + "s";
}

function since(rfc3339, serverNow) {
  const at = Date.parse(rfc3339);
  if (Number.isNaN(at)) return "";
  return fmtDuration((serverNow - at) / 1000);
}

function fmtKey(name, id) {
  if (name) return name;
  return id || "—";
}

// ---- auth -----------------------------------------------------------------

function token() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
}

function show(which) {
  for (const id of ["login", "forbidden", "board"]) $(id).hidden = id !== which;
  $("signout").hidden = !token();
}

function askToken(message) {
  stop();
  setConn("off", "signed out");
  show("login");
  $("login-msg").textContent = message || "";
  $("token").focus();
}

function signIn(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  try { sessionStorage.setItem(TOKEN_KEY, value); } catch (_) { /* private mode: kept below */ }
  state.memoryToken = value;
  $("token").value = "";
  $("login-msg").textContent = "";
  poll();
}

function signOut() {
  try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing kept */ }
  state.memoryToken = null;
  askToken("");
}

function currentToken() {
  return token() || state.memoryToken || null;
}

// ---- polling --------------------------------------------------------------

function stop() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

function schedule() {
  stop();
  if (!document.hidden) state.timer = setTimeout(poll, POLL_MS);
}

async function poll() {
  if (state.polling) return;
  state.polling = true;
  try { await pollOnce(); } finally { state.polling = false; }
}

async function pollOnce() {
  const headers = {};
  const t = currentToken();
  if (t) headers.Authorization = "Bearer " + t;
  let resp;
  try {
    resp = await fetch("/api/dashboard", { headers, cache: "no-store", credentials: "omit" });
  } catch (_) {
    setConn("off", "server unreachable, retrying…");
    return schedule();
  }
  if (resp.status === 401) {
    const had = Boolean(t);
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing kept */ }
    state.memoryToken = null;
    return askToken(had ? "That token was refused." : "");
  }
  if (resp.status === 403) {
    stop();
    setConn("off", "not allowed");
    $("forbidden-why").textContent = resp.headers.get("x-cryptun-error") === "admin_host"
      ? "This server has no admin token, so its data is served only to pages opened as "
        + "localhost, a loopback address or the server's own domain. Open "
        + "http://localhost:" + (location.port || "80") + "/dashboard instead."
      : "This server has no admin token, so its data is served to loopback addresses only. "
        + "Open the dashboard on the server's machine (or through an SSH tunnel), or start "
        + "the server with --admin-token.";
    return show("forbidden");
  }
  if (!resp.ok) {
    setConn("off", "HTTP " + resp.status + ", retrying…");
    return schedule();
  }
  let snapshot;
  try { snapshot = await resp.json(); } catch (_) {
    setConn("off", "bad answer, retrying…");
    return schedule();
  }
  show("board");
  // Ages are measured on the server's clock, not this machine's.
  const now = Date.parse(snapshot.server.now);
  render(snapshot, Number.isNaN(now) ? Date.now() : now);
  schedule();
}

function setConn(kind, text) {
  const pill = $("conn");
  pill.className = "pill " + kind;
  pill.textContent = text;
}

// ---- rendering ------------------------------------------------------------

function render(s, now) {
  const server = s.server;
  const cert = server.certificate;
  $("server").textContent = "v" + server.version + " · " + server.domain + " · auth " + server.auth
    + (server.node ? " · node " + server.node : "")
    + (cert ? " · certificate " + (cert.not_after ? cert.days_left + " days left" : "not yet issued") : "");
  const certError = $("cert-error");
  certError.hidden = !(cert && cert.last_error);
  certError.textContent = cert && cert.last_error ? "ACME: " + cert.last_error : "";
  $("uptime").textContent = "up " + fmtDuration(server.uptime_secs);
  if (server.draining) setConn("draining", "draining");
  else setConn("on", "live");

  const t = s.totals;
  $("t-tunnels").textContent = t.tunnels;
  $("t-clients").textContent = t.clients;
  $("t-requests").textContent = t.requests;
  $("t-rate").textContent = fmtRate(t.rate);
  $("t-inflight").textContent = t.in_flight;
  $("t-4xx").textContent = t.status["4xx"];
  $("t-4xx").classList.toggle("warn", t.status["4xx"] > 0);
  $("t-5xx").textContent = t.status["5xx"];
  $("t-5xx").classList.toggle("bad", t.status["5xx"] > 0);
  $("t-5xx-sub").textContent = "502: " + t.status["502"] + " · 504: " + t.status["504"];
  $("t-bytes").textContent = fmtBytes(t.bytes_in) + " / " + fmtBytes(t.bytes_out);

  // A cluster node's snapshot is the cluster's: a node column, and its nodes.
  const nodes = s.nodes || [];
  document.body.classList.toggle("cluster", nodes.length > 0);
  renderNodes(nodes);
  renderTunnels(s.tunnels, now);
  renderClients(s.clients, now);
  $("tunnel-count").textContent = t.tunnels;
  $("client-count").textContent = t.clients;
  const omitted = $("omitted");
  omitted.hidden = !s.omitted;
  omitted.textContent = s.omitted ? s.omitted + " more tunnels not listed." : "";
  $("updated").textContent = "Updated " + new Date().toLocaleTimeString()
    + (t.held_names ? " · " + t.held_names + " names held for reconnecting clients" : "");
}

// Rows are kept by key and updated in place, so the table does not flicker
// and a selection or hover survives the next update.
function reconcile(tbody, rows, list, key, build, fill) {
  const seen = new Set();
  for (const item of list) {
    const k = key(item);
    seen.add(k);
    let tr = rows.get(k);
    if (!tr) {
      tr = build(item);
      tr.dataset.key = k;
      rows.set(k, tr);
    }
    fill(tr, item);
    tbody.append(tr);
  }
  for (const [k, tr] of rows) {
    if (!seen.has(k)) { tr.remove(); rows.delete(k); }
  }
}

function cells(tr, names) {
  const out = {};
  for (const name of names) {
    const td = el("td", name);
    tr.append(td);
    out[name] = td;
  }
  return out;
}

const TUNNEL_COLUMNS = ["subdomain", "client", "key", "since", "requests", "rate",
  "inflight", "e4xx", "e5xx", "gateway", "bytes", "node"];

function buildTunnel(t) {
  const tr = el("tr");
  tr.dataset.subdomain = t.subdomain;
  const c = cells(tr, TUNNEL_COLUMNS);
  const link = el("a", null, t.subdomain);
  // Only web URLs become links.
  if (/^https?:\/\//.test(t.public_url)) link.href = t.public_url;
  link.target = "_blank";
  link.rel = "noopener noreferrer";
  link.title = t.public_url;
  c.subdomain.append(link);
  // A pool's members each have a row, under the same name.
  if (t.pool) c.subdomain.append(" ", el("span", "pool", "pool"));
  for (const n of ["requests", "rate", "inflight", "e4xx", "e5xx", "gateway", "bytes"]) c[n].classList.add("num");
  return tr;
}

function fillTunnel(tr, t, now) {
  const s = t.stats;
  const [, client, key, since_, requests, rate, inflight, e4xx, e5xx, gateway, bytes, node] = tr.children;
  client.textContent = t.client_addr;
  node.textContent = t.node || "";
  key.textContent = fmtKey(t.key_name, t.key_id);
  key.title = t.key_id ? (t.key_name || "") + " (key " + t.key_id + ")" : "no API key";
  since_.textContent = since(t.created_at, now);
  since_.title = t.created_at;
  requests.textContent = s.requests;
  rate.textContent = fmtRate(s.rate);
  inflight.textContent = s.in_flight;
  e4xx.textContent = s.status["4xx"];
  e4xx.classList.toggle("warn", s.status["4xx"] > 0);
  e5xx.textContent = s.status["5xx"];
  e5xx.classList.toggle("bad", s.status["5xx"] > 0);
  gateway.textContent = s.status["502"] + " / " + s.status["504"];
  bytes.textContent = fmtBytes(s.bytes_in) + " / " + fmtBytes(s.bytes_out);
}

function renderTunnels(list, now) {
  const tbody = $("tunnels").tBodies[0];
  reconcile(tbody, state.tunnels, list, (t) => t.tunnel_id, buildTunnel, (tr, t) => fillTunnel(tr, t, now));
  $("no-tunnels").hidden = list.length > 0;
  applyFilter();
}

// Hides the rows whose subdomain, client address and key do not contain
// the filter's text.
function applyFilter() {
  const needle = $("filter").value.trim().toLowerCase();
  for (const tr of state.tunnels.values()) {
    const [subdomain, client, key] = tr.children;
    const node = tr.lastElementChild;
    const text = (subdomain.textContent + " " + client.textContent + " " + key.textContent
      + " " + node.textContent).toLowerCase();
    tr.hidden = Boolean(needle) && !text.includes(needle);
  }
}

function buildClient() {
  const tr = el("tr");
  cells(tr, ["address", "key", "since", "names", "node"]);
  return tr;
}

function fillClient(tr, c, now) {
  const [address, key, since_, names, node] = tr.children;
  address.textContent = c.client_addr;
  node.textContent = c.node || "";
  key.textContent = fmtKey(c.key_name, c.key_id);
  key.title = c.key_id ? (c.key_name || "") + " (key " + c.key_id + ")" : "no API key";
  since_.textContent = since(c.connected_since, now);
  since_.title = c.connected_since;
  names.textContent = c.tunnels.join(", ");
}

function renderClients(list, now) {
  const tbody = $("clients").tBodies[0];
  // One address may be a client of two nodes.
  reconcile(tbody, state.clients, list, (c) => (c.node || "") + " " + c.client_addr, buildClient,
    (tr, c) => fillClient(tr, c, now));
  $("no-clients").hidden = list.length > 0;
}

const NODE_COLUMNS = ["name", "state", "version", "up", "tunnels", "clients", "rate"];

function buildNode(n) {
  const tr = el("tr");
  tr.dataset.node = n.name;
  const c = cells(tr, NODE_COLUMNS);
  for (const name of ["tunnels", "clients", "rate"]) c[name].classList.add("num");
  return tr;
}

function fillNode(tr, n) {
  const [name, state_, version, up, tunnels, clients, rate] = tr.children;
  name.textContent = n.name;
  state_.textContent = !n.reachable ? "unreachable" : n.draining ? "draining" : "live";
  state_.classList.toggle("bad", !n.reachable);
  version.textContent = n.version ? "v" + n.version : "–";
  up.textContent = n.uptime_secs === null || n.uptime_secs === undefined ? "–" : fmtDuration(n.uptime_secs);
  tunnels.textContent = n.reachable ? n.tunnels : "–";
  clients.textContent = n.reachable ? n.clients : "–";
  rate.textContent = n.reachable ? fmtRate(n.rate) : "–";
}

function renderNodes(list) {
  $("nodes-panel").hidden = list.length === 0;
  $("node-count").textContent = list.length;
  reconcile($("nodes").tBodies[0], state.nodes, list, (n) => n.name, buildNode, fillNode);
}

// ---- start ----------------------------------------------------------------

document.addEventListener("visibilitychange", () => {
  // A hidden tab stops asking; it catches up at once when shown again.
  if (document.hidden) stop();
  else if ($("login").hidden && $("forbidden").hidden) poll();
});
$("login-form").addEventListener("submit", signIn);
$("signout").addEventListener("click", signOut);
$("filter").addEventListener("input", applyFilter);
poll();
