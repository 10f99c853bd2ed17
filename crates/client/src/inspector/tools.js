"use strict";
// The inspector page's tools, pure functions of an exchange: the filter
// (status, method, path; assets hidden), the request as a curl command,
// and the editor's text parsed back into a replay's edits. page.js uses
// them; nothing here touches the DOM.

const METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"]);

// A filter's words: "404", "4xx", "POST", "/api" or the explicit forms
// "status:404", "method:post", "path:/api". Words of one kind are
// alternatives (404 500: either), kinds must all match (POST 4xx).
function parseFilter(text) {
  const kinds = { status: [], method: [], path: [] };
  for (const word of text.trim().split(/\s+/).filter(Boolean)) {
    const explicit = /^(status|method|path):(.*)$/i.exec(word);
    if (explicit) {
      const kind = explicit[1].toLowerCase();
      if (explicit[2]) kinds[kind].push(kind === "path" ? explicit[2].toLowerCase() : explicit[2].toUpperCase());
    } else if (/^[1-5](\d\d|xx)$/i.test(word)) {
      kinds.status.push(word.toUpperCase());
    } else if (METHODS.has(word.toUpperCase())) {
      kinds.method.push(word.toUpperCase());
    } else {
      kinds.path.push(word.toLowerCase());
    }
  }
  const status = (s, want) => {
    const got = String(s.status || "");
    return want.endsWith("XX") ? got[0] === want[0] : got === want;
  };
  return (s) =>
    (!kinds.status.length || kinds.status.some((w) => status(s, w))) &&
    (!kinds.method.length || kinds.method.includes(String(s.method).toUpperCase())) &&
    (!kinds.path.length || kinds.path.some((w) => String(s.path).toLowerCase().includes(w)));
}

const ASSET_TYPE = /javascript|ecmascript|^text\/css|^image\/|^font\/|font-woff|application\/(x-)?font|wasm|sourcemap/i;
const ASSET_PATH = /\.(m?js|cjs|jsx|tsx?|vue|svelte|css|scss|sass|less|map|png|jpe?g|gif|svg|webp|avif|ico|bmp|woff2?|ttf|otf|eot|wasm)$/i;
// A dev server's own modules (Vite's client, files by path, bare imports).
const DEV_MODULE = /^\/(@vite|@fs|@id|@react-refresh|node_modules)\//;

// Scripts, styles, images, fonts and source maps, by the response's
// content type or the path: what buries a page's document and API calls.
function isAsset(s) {
  if (s.content_type && ASSET_TYPE.test(s.content_type)) return true;
  const path = String(s.path).split("?")[0];
  return ASSET_PATH.test(path) || DEV_MODULE.test(path);
}

// Headers the visitor did not send as such: the server's forwarding
// headers, and what curl sets itself.
const NOT_SENT = new Set(["host", "content-length", "connection", "keep-alive", "transfer-encoding", "te",
  "trailer", "upgrade", "proxy-connection", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
  "x-forwarded-port"]);

function shellQuote(text) {
  return "'" + String(text).replace(/'/g, "'\\''") + "'";
}

// The request of exchange `d` (the API's detail) as a curl command sent to
// `base` (the tunnel's public URL), as the visitor sent it.
function curlCommand(d, base) {
  const url = base.replace(/\/+$/, "") + d.path;
  const args = ["curl"];
  if (d.method === "HEAD") args.push("--head");
  else if (d.method !== "GET" || d.request.body.size > 0) args.push("-X " + shellQuote(d.method));
  args.push(shellQuote(url));
  for (const [name, value] of d.request.headers) {
    if (!NOT_SENT.has(name.toLowerCase())) args.push("-H " + shellQuote(name + ": " + value));
  }
  const body = d.request.body;
  let before = "";
  if (body.kind === "text") {
    args.push("--data-binary " + shellQuote(body.text));
  } else if (body.kind === "binary") {
    before = "printf %s " + shellQuote(body.base64) + " | base64 -d | ";
    args.push("--data-binary @-");
  }
  const note = body.truncated
    ? "# The body was truncated: only its first " + body.captured + " of " + body.size + " bytes are here.\n"
    : "";
  return note + before + args.join(" \\\n  ");
}

// What the editor shows for exchange `d`: headers one "Name: value" a line
// (without Content-Length: the replay sets it to the body sent), and the
// body as text, or base64 when it is binary.
function editorText(d) {
  const headers = d.request.headers
    .filter(([name]) => name.toLowerCase() !== "content-length")
    .map(([name, value]) => name + ": " + value)
    .join("\n");
  const body = d.request.body;
  const base64 = body.kind === "binary";
  return { method: d.method, path: d.path, headers, body: base64 ? body.base64 : body.text || "", base64 };
}

// The editor's fields back as the replay API's edits.
function editsFrom(fields) {
  const headers = [];
  for (const line of fields.headers.split("\n")) {
    if (!line.trim()) continue;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new Error("a header line is Name: value, not " + JSON.stringify(line));
    headers.push([line.slice(0, colon).trim(), line.slice(colon + 1).trim()]);
  }
  const edits = { method: fields.method.trim().toUpperCase(), path: fields.path.trim(), headers };
  if (fields.base64) edits.body_base64 = fields.body.replace(/\s+/g, "");
  else edits.body = fields.body;
  return edits;
}
