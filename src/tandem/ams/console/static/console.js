// The Tandem console: one page over the admin API (docs/console.md).
// Every screen asks /api/v1 with the session cookie; writes carry X-CSRF-Token.
// Every second the page asks /api/v1/ha; when the AMS stops answering it looks for the
// pair's new active among the AMS URLs the HA view listed and moves there (same session:
// sessions are stored, so they replicate).
"use strict";

const S = { me: null, csrf: null, ha: null, failing: false, timers: [], view: null, schemas: null };
const URLS_KEY = "tandem.ams_urls";
const GONE = new Set(["not_active", "unavailable", "not_durable", "store_error"]);

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const state = (s) => `<span class="state ${esc(s)}">${esc(s ?? "?")}</span>`;
const yes = (b) => (b ? "yes" : "no");
const ago = (iso) => {
  if (!iso) return "";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : new Date(iso).toLocaleString();
};
const can = (role) => ({ viewer: 1, operator: 2, admin: 3 })[S.me?.role] >= ({ viewer: 1, operator: 2, admin: 3 })[role];

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
  get text() {
    if (this.status === 403 && this.body.role) return `needs role ${this.body.role}: ${this.body.message || ""}`;
    return this.message;
  }
}

async function api(method, path, body, contentType) {
  const headers = {};
  if (body !== undefined && contentType === undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  } else if (contentType) headers["Content-Type"] = contentType;
  if (method !== "GET" && S.csrf) headers["X-CSRF-Token"] = S.csrf;
  let r;
  try {
    r = await fetch(path, { method, headers, body, credentials: "same-origin", cache: "no-store" });
  } catch (e) {
    connectionLost();
    throw new ApiError(0, { code: "unreachable", message: "the AMS does not answer: failing over…" });
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text.slice(0, 300) }; }
  if (r.status === 401 && path !== "/api/v1/session") {
    showSignIn("The session ended: sign in again.");
  }
  if (r.status === 503 && data && GONE.has(data.code)) connectionLost();
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

// ---------- failover ----------
function knownUrls() {
  let urls = [];
  try { urls = JSON.parse(localStorage.getItem(URLS_KEY) || "[]"); } catch (e) { urls = []; }
  return Array.from(new Set([location.origin, ...urls]));
}

function banner(text, bad) {
  const b = $("#banner");
  b.hidden = !text;
  b.textContent = text || "";
  b.className = bad ? "bad" : "";
}

async function answers(url) {
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), 700);
  try {
    const r = await fetch(url + "/api/v1/health", { mode: "cors", cache: "no-store", signal: ctl.signal });
    return r.ok;
  } catch (e) { return false; } finally { clearTimeout(t); }
}

async function connectionLost() {
  if (S.failing) return;
  S.failing = true;
  document.body.dataset.failover = "searching";
  banner("The active AMS does not answer: failing over…", true);
  const started = Date.now();
  for (let round = 0; ; round++) {
    for (const url of knownUrls()) {
      if (await answers(url)) {
        if (url === location.origin) {
          S.failing = false;
          document.body.dataset.failover = "";
          banner("");
          render();
          return;
        }
        banner(`Failing over: moving to the new active AMS at ${url}…`, true);
        location.replace(url + "/console" + location.hash);
        return;
      }
    }
    const waited = Math.round((Date.now() - started) / 1000);
    banner(`The active AMS does not answer: failing over… (${waited} s; trying ${knownUrls().join(", ")})`, true);
    await new Promise((res) => setTimeout(res, 250));
  }
}

async function pollHA() {
  if (S.failing || !S.me) return;
  try {
    S.ha = await api("GET", "/api/v1/ha");
  } catch (e) { return; }
  const urls = S.ha.ams.urls || [];
  if (urls.length) localStorage.setItem(URLS_KEY, JSON.stringify(urls));
  const me = S.ha.ams.halves.find((h) => h.client_url === location.origin) || S.ha.ams.halves.find((h) => h.serving);
  $("#who").textContent = `${S.me.actor} (${S.me.role}) · on ${me ? me.server : location.host} ${me ? me.state : ""}`;
  if (S.view === "ha") drawHA();
}

// ---------- sign-in ----------
function showSignIn(message) {
  clearTimers();
  S.me = null; S.csrf = null; S.view = "signin";
  $("#nav").hidden = true; $("#signout").hidden = true; $("#who").textContent = "";
  $("#main").innerHTML = `<div class="signin card"><h1>Sign in</h1>
    <p class="muted">Paste a user token (the first admin token is in the AMS store's <code>admin.token</code>).</p>
    <form id="signin-form" class="grid"><label for="token">Token</label>
      <input id="token" name="token" type="password" autocomplete="off" required>
      <span></span><div><button class="primary" type="submit">Sign in</button></div></form>
    <div id="signin-error">${message ? `<div class="error-box">${esc(message)}</div>` : ""}</div></div>`;
  $("#main").dataset.ready = "signin";
  $("#signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("#token").value.trim();
    try {
      const me = await api("POST", "/api/v1/session", { token });
      $("#token").value = "";
      signedIn(me);
    } catch (e) {
      $("#signin-error").innerHTML = `<div class="error-box">Sign-in refused: ${esc(e.text)}</div>`;
    }
  });
}

function signedIn(me) {
  S.me = me; S.csrf = me.csrf;
  $("#nav").hidden = false; $("#signout").hidden = false;
  $("#who").textContent = `${me.actor} (${me.role})`;
  if (!location.hash || location.hash === "#") location.hash = "#/ha";
  else render();
}

// ---------- routing ----------
function clearTimers() { S.timers.forEach(clearInterval); S.timers = []; }
function every(ms, fn) { S.timers.push(setInterval(fn, ms)); }

const VIEWS = [
  [/^#\/ha$/, "ha", viewHA],
  [/^#\/projects$/, "projects", viewProjects],
  [/^#\/projects\/new$/, "projects", () => viewProject(null)],
  [/^#\/projects\/([^/]+)$/, "projects", (m) => viewProject(decodeURIComponent(m[1]))],
  [/^#\/consumers$/, "consumers", viewConsumers],
  [/^#\/gateways$/, "gateways", viewGateways],
  [/^#\/traffic$/, "traffic", viewTraffic],
  [/^#\/users$/, "users", viewUsers],
  [/^#\/audit$/, "audit", viewAudit],
  [/^#\/config$/, "config", viewConfig],
];

async function render() {
  if (!S.me) return;
  clearTimers();
  const hash = location.hash || "#/ha";
  for (const [re, nav, fn] of VIEWS) {
    const m = hash.match(re);
    if (!m) continue;
    $$("#nav a").forEach((a) => a.classList.toggle("current", a.dataset.nav === nav));
    S.view = nav;
    const main = $("#main");
    main.dataset.ready = "";
    try {
      await fn(m);
    } catch (e) {
      if (e instanceof ApiError) main.innerHTML = `<div class="error-box">${esc(e.text)}</div>`;
      else throw e;
    }
    main.dataset.ready = hash;
    return;
  }
  location.hash = "#/ha";
}

function notice(html, where) {
  const box = where || $("#notices");
  if (box) box.innerHTML = html;
}

function showError(e, where) {
  notice(`<div class="error-box">${esc(e instanceof ApiError ? e.text : String(e))}</div>`, where);
}

// Field errors: the API's `field` ("policies[0].limit") names an element's data-field; else its
// longest named prefix ("policies[0]"), else the form's error box.
function fieldErrors(form, e) {
  $$(".field-error", form).forEach((x) => x.remove());
  $$(".invalid", form).forEach((x) => x.classList.remove("invalid"));
  const box = $(".form-error", form);
  box.innerHTML = "";
  const field = e instanceof ApiError ? e.body.field : null;
  let el = null;
  if (field) {
    let name = field;
    while (name && !(el = form.querySelector(`[data-field="${CSS.escape(name)}"]`))) {
      const cut = Math.max(name.lastIndexOf("."), name.lastIndexOf("["));
      name = cut > 0 ? name.slice(0, cut) : "";
    }
  }
  if (el) {
    el.classList.add("invalid");
    const span = document.createElement("span");
    span.className = "field-error";
    span.dataset.errorFor = field;
    span.textContent = e.body.message || e.message;
    el.insertAdjacentElement("afterend", span);
    el.focus();
  } else {
    box.innerHTML = `<div class="error-box">${esc(e instanceof ApiError ? e.text : String(e))}</div>`;
  }
}

// ---------- HA ----------
async function viewHA() {
  $("#main").innerHTML = `<h1>High availability</h1><div id="notices"></div><div id="ha-body"></div>
    <h2>Recent state changes</h2><div id="ha-history"></div>`;
  if (!S.ha) S.ha = await api("GET", "/api/v1/ha");
  drawHA();
}

function halfRows(halves) {
  const top = Math.max(0, ...halves.map((h) => h.lsn || 0));
  return halves.map((h) => `<tr data-server="${esc(h.server)}" data-state="${esc(h.state)}">
    <td>${esc(h.server)}${h.gateway && h.gateway !== h.server ? ` <span class="muted">(${esc(h.gateway)})</span>` : ""}</td>
    <td>${esc(h.role)}</td><td>${state(h.reachable === false && !h.state ? "down" : h.state)}</td>
    <td class="num">${esc(h.epoch)}</td><td class="num">${esc(h.lsn)}</td>
    <td class="num">${h.lsn != null ? top - h.lsn : ""}${h.peer && h.peer.lag != null ? ` <span class="muted">(peer lag ${esc(h.peer.lag)})</span>` : ""}</td>
    <td>${h.lock ? yes(h.lock.held) : ""}</td><td>${h.isolated == null ? "" : yes(h.isolated)}</td>
    <td>${esc(ago(h.since))}</td>
    <td>${h.reachable === false ? `<span class="bad">not reachable${h.error ? ": " + esc(h.error) : ""}</span>` : esc(h.waiting_reason || h.reason)}</td>
    <td>${h.client_url ? `<code>${esc(h.client_url)}</code>` : ""}</td></tr>`).join("");
}

const HALF_HEAD = `<tr><th>Server</th><th>Role</th><th>State</th><th>Epoch</th><th>LSN</th><th>Behind</th>
  <th>Lock held</th><th>Isolated</th><th>Since</th><th>Reason of the last change</th><th>Client URL</th></tr>`;

function drawHA() {
  const body = $("#ha-body");
  if (!body || !S.ha) return;
  const ha = S.ha;
  const switchover = can("admin") ? `<button id="switchover" type="button">Switch over…</button>` : "";
  let html = `<div class="card" id="ams-pair"><h2>AMS pair ${esc(ha.ams.pair)}</h2>
    <table>${HALF_HEAD}${halfRows(ha.ams.halves)}</table>${switchover}</div>`;
  html += ha.gateways.length ? ha.gateways.map((g) => `<div class="card gateway-pair" data-pair="${esc(g.pair)}">
      <h2>AGS pair ${esc(g.pair)} <span class="muted">environment ${esc(g.environment)}</span></h2>
      <table>${HALF_HEAD}${halfRows(g.halves)}</table></div>`).join("")
    : `<p class="muted">No gateway has reported yet.</p>`;
  body.innerHTML = html;
  const btn = $("#switchover");
  if (btn) btn.addEventListener("click", async () => {
    if (!confirm("Hand the active role of the AMS pair to its passive? The console follows it.")) return;
    try {
      const r = await api("POST", "/api/v1/ha/switchover");
      notice(`<div class="notice">${esc(r.message)}</div>`);
    } catch (e) { showError(e); }
  });
  $("#ha-history").innerHTML = `<table><tr><th>At</th><th>Server</th><th></th><th>Change</th><th>Epoch</th><th>Reason</th></tr>
    ${ha.history.map((h) => `<tr><td>${esc(new Date(h.at).toLocaleTimeString())}</td><td>${esc(h.server)}</td>
      <td>${esc(h.mode)}</td><td>${esc(h.from)} → ${state(h.to)}</td><td class="num">${esc(h.epoch)}</td>
      <td>${esc(h.reason)}</td></tr>`).join("")}</table>`;
}

// ---------- projects ----------
async function viewProjects() {
  const projects = await api("GET", "/api/v1/projects");
  const admin = can("admin");
  $("#main").innerHTML = `<h1>Projects <span class="muted">(${projects.length})</span></h1><div id="notices"></div>
    <div class="toolbar">${admin ? `<a href="#/projects/new"><button class="primary" type="button">New project</button></a>` : ""}
      <input id="filter" placeholder="filter by name or path">
      ${admin ? `<span>Import OpenAPI: <input id="openapi-file" type="file" accept=".json,.yaml,.yml">
        <input id="openapi-path" placeholder="context path (optional)"> <input id="openapi-target" placeholder="target URL (optional)">
        <button id="openapi-import" type="button">Import</button></span>` : ""}</div>
    <table id="projects"><thead><tr><th>Name</th><th>Version</th><th>Context path</th><th>Targets</th><th>Policies</th></tr></thead>
    <tbody>${projects.map((p) => `<tr data-name="${esc(p.name)}"><td><a href="#/projects/${encodeURIComponent(p.name)}">${esc(p.name)}</a></td>
      <td>${esc(p.version)}</td><td><code>${esc(p.context_path)}</code></td><td>${p.targets.map((t) => esc(t.url)).join("<br>")}</td>
      <td>${p.policies.map((x) => esc(x.type)).join(", ")}</td></tr>`).join("")}</tbody></table>`;
  $("#filter").addEventListener("input", (ev) => {
    const q = ev.target.value.toLowerCase();
    $$("#projects tbody tr").forEach((tr) => { tr.hidden = q && !tr.textContent.toLowerCase().includes(q); });
  });
  const imp = $("#openapi-import");
  if (imp) imp.addEventListener("click", async () => {
    const file = $("#openapi-file").files[0];
    if (!file) return showError("choose an OpenAPI 3 document (JSON or YAML) first");
    const q = new URLSearchParams();
    if ($("#openapi-path").value) q.set("context_path", $("#openapi-path").value);
    if ($("#openapi-target").value) q.set("target", $("#openapi-target").value);
    const type = /\.ya?ml$/i.test(file.name) ? "application/yaml" : "application/json";
    try {
      const p = await api("POST", `/api/v1/import/openapi?${q}`, await file.text(), type);
      location.hash = `#/projects/${encodeURIComponent(p.name)}`;
    } catch (e) { showError(e); }
  });
}

async function policySchemas() {
  if (S.schemas) return S.schemas;
  const spec = await (await fetch("/openapi.json", { cache: "no-store" })).json();
  const all = spec.components.schemas;
  const mapping = all.Project.properties.policies.items.discriminator.mapping;
  S.schemas = {};
  for (const [type, ref] of Object.entries(mapping)) S.schemas[type] = all[ref.split("/").pop()];
  return S.schemas;
}

function plain(prop) {
  // `X | None` is anyOf [X, {type: null}]
  if (prop.anyOf) {
    const other = prop.anyOf.filter((x) => x.type !== "null");
    if (other.length === 1) return { ...other[0], nullable: true, default: prop.default, description: prop.description };
    return { ...prop, json: true };
  }
  return prop;
}

function policyField(i, name, prop, value, required) {
  const p = plain(prop);
  const field = `policies[${i}].${name}`;
  const v = value !== undefined ? value : p.default;
  const label = `<label title="${esc(prop.description || "")}">${esc(name)}${required ? " *" : ""}</label>`;
  let input;
  if (p.type === "boolean") {
    input = `<input type="checkbox" data-field="${esc(field)}" data-kind="bool" ${v ? "checked" : ""}>`;
  } else if (p.enum) {
    input = `<select data-field="${esc(field)}" data-kind="str">${p.nullable || !required ? `<option value=""></option>` : ""}
      ${p.enum.map((e) => `<option ${e === v ? "selected" : ""}>${esc(e)}</option>`).join("")}</select>`;
  } else if (p.type === "integer" || p.type === "number") {
    input = `<input type="number" step="any" data-field="${esc(field)}" data-kind="num" value="${v ?? ""}">`;
  } else if (p.type === "string") {
    input = `<input type="text" data-field="${esc(field)}" data-kind="str" value="${esc(v ?? "")}">`;
  } else if (p.type === "array" && p.items && (p.items.type === "string" || p.items.enum)) {
    input = `<input type="text" data-field="${esc(field)}" data-kind="list" placeholder="comma-separated" value="${esc((v || []).join(", "))}">`;
  } else {
    input = `<textarea data-field="${esc(field)}" data-kind="json" placeholder="JSON">${v === undefined || v === null ? "" : esc(JSON.stringify(v, null, 1))}</textarea>`;
  }
  return `${label}<div>${input}</div>`;
}

function policyEditor(i, policy, schemas) {
  const schema = schemas[policy.type];
  const props = Object.entries(schema.properties).filter(([k]) => k !== "type");
  const req = new Set(schema.required || []);
  return `<div class="policy" data-type="${esc(policy.type)}" data-index="${i}" data-field="policies[${i}]">
    <div class="head"><span>${esc(policy.type)}</span><button type="button" class="remove-policy danger">Remove</button></div>
    <div class="grid">${props.map(([k, p]) => policyField(i, k, p, policy[k], req.has(k))).join("")}</div></div>`;
}

function readPolicy(div) {
  const out = { type: div.dataset.type };
  for (const el of $$("[data-field]", div)) {
    if (el === div) continue;
    const key = el.dataset.field.split(".").pop();
    const kind = el.dataset.kind;
    if (kind === "bool") { out[key] = el.checked; continue; }
    const raw = el.value.trim();
    if (raw === "") continue; // left empty: the API's default
    if (kind === "num") out[key] = Number(raw);
    else if (kind === "list") out[key] = raw.split(",").map((x) => x.trim()).filter(Boolean);
    else if (kind === "json") {
      try { out[key] = JSON.parse(raw); } catch (e) {
        throw new ApiError(422, { field: el.dataset.field, message: `${el.dataset.field}: not valid JSON` });
      }
    } else out[key] = raw;
  }
  return out;
}

function targetRow(i, t) {
  return `<div class="row target"><input type="text" class="t-url" data-field="targets[${i}].url" placeholder="http://host:port/base" value="${esc(t.url)}">
    <input type="number" class="t-weight" data-field="targets[${i}].weight" value="${esc(t.weight ?? 1)}" min="0" style="min-width:5em;width:6em">
    <button type="button" class="remove-target">−</button></div>`;
}

const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

async function viewProject(name) {
  const schemas = await policySchemas();
  const p = name ? await api("GET", `/api/v1/projects/${encodeURIComponent(name)}`)
    : { name: "", version: "1", description: "", context_path: "/", targets: [{ url: "", weight: 1 }], hosts: [], methods: [], resources: [], policies: [] };
  const editable = can("admin");
  $("#main").innerHTML = `<h1>${name ? `Project ${esc(name)}` : "New project"}</h1><div id="notices"></div>
    <form id="project-form" class="grid" novalidate>
      <label>Name *</label><div><input type="text" id="p-name" data-field="name" value="${esc(p.name)}" ${name ? "readonly" : ""}></div>
      <label>Version</label><div><input type="text" id="p-version" data-field="version" value="${esc(p.version)}"></div>
      <label>Description</label><div><input type="text" id="p-description" data-field="description" value="${esc(p.description)}"></div>
      <label>Context path *</label><div><input type="text" id="p-context" data-field="context_path" value="${esc(p.context_path)}"></div>
      <label>Targets *</label><div id="targets" data-field="targets">${p.targets.map((t, i) => targetRow(i, t)).join("")}
        <button type="button" id="add-target">Add target</button></div>
      <label>Hosts</label><div><input type="text" id="p-hosts" data-field="hosts" placeholder="comma-separated; empty: any" value="${esc(p.hosts.join(", "))}"></div>
      <label>Methods</label><div data-field="methods">${METHODS.map((m) => `<label><input type="checkbox" class="p-method" value="${m}" ${p.methods.includes(m) ? "checked" : ""}> ${m}</label>`).join(" ")}
        <span class="muted">none: every method</span></div>
      <label>Resources</label><div><textarea id="p-resources" data-field="resources" placeholder='[{"path": "/pets", "method": "GET"}]'>${p.resources.length ? esc(JSON.stringify(p.resources, null, 1)) : ""}</textarea></div>
      <label>Policies</label><div><div id="policies" data-field="policies">${p.policies.map((x, i) => policyEditor(i, x, schemas)).join("")}</div>
        <div class="row"><select id="policy-type">${Object.keys(schemas).map((t) => `<option>${esc(t)}</option>`).join("")}</select>
        <button type="button" id="add-policy">Add policy</button></div></div>
      <span></span><div>${editable ? `<button class="primary" type="submit" id="save">${name ? "Save" : "Create"}</button>` : `<span class="muted">read only: editing projects needs role admin</span>`}
        ${name && editable ? `<button type="button" class="danger" id="delete">Delete</button>` : ""}</div>
      <span></span><div class="form-error"></div>
    </form>
    ${name ? `<h2>Deploy</h2><div class="toolbar"><input id="env" value="default" data-field="environment">
      <button type="button" id="deploy" class="primary">Deploy</button><button type="button" id="undeploy">Undeploy</button></div>
      <div id="deployment"></div>` : ""}`;
  const form = $("#project-form");
  const renumber = () => {
    $$(".target", form).forEach((row, i) => { $(".t-url", row).dataset.field = `targets[${i}].url`; $(".t-weight", row).dataset.field = `targets[${i}].weight`; });
    $$(".policy", form).forEach((div, i) => {
      div.dataset.index = i; div.dataset.field = `policies[${i}]`;
      $$("[data-field]", div).forEach((el) => { if (el !== div) el.dataset.field = el.dataset.field.replace(/^policies\[\d+\]/, `policies[${i}]`); });
    });
  };
  form.addEventListener("click", (ev) => {
    if (ev.target.classList.contains("remove-target")) { ev.target.closest(".target").remove(); renumber(); }
    if (ev.target.classList.contains("remove-policy")) { ev.target.closest(".policy").remove(); renumber(); }
  });
  $("#add-target").addEventListener("click", () => {
    $("#add-target").insertAdjacentHTML("beforebegin", targetRow($$(".target", form).length, { url: "", weight: 1 }));
  });
  $("#add-policy").addEventListener("click", () => {
    $("#policies").insertAdjacentHTML("beforeend", policyEditor($$(".policy", form).length, { type: $("#policy-type").value }, schemas));
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const body = readProject(form);
      const saved = name ? await api("PUT", `/api/v1/projects/${encodeURIComponent(name)}`, body)
        : await api("POST", "/api/v1/projects", body);
      if (!name) { location.hash = `#/projects/${encodeURIComponent(saved.name)}`; return; }
      notice(`<div class="notice">Saved ${esc(saved.name)}.</div>`);
      fieldErrors(form, null);
    } catch (e) { fieldErrors(form, e); }
  });
  const del = $("#delete");
  if (del) del.addEventListener("click", async () => {
    if (!confirm(`Delete project ${name}?`)) return;
    try { await api("DELETE", `/api/v1/projects/${encodeURIComponent(name)}`); location.hash = "#/projects"; } catch (e) { showError(e); }
  });
  if (name) for (const action of ["deploy", "undeploy"]) {
    $(`#${action}`).addEventListener("click", async () => {
      try {
        const job = await api("POST", `/api/v1/projects/${encodeURIComponent(name)}/${action}`, { environment: $("#env").value || "default" });
        followDeployment(job);
      } catch (e) { showError(e, $("#deployment")); }
    });
  }
}

function readProject(form) {
  const body = {
    name: $("#p-name").value.trim(), version: $("#p-version").value.trim() || "1",
    description: $("#p-description").value, context_path: $("#p-context").value.trim(),
    targets: $$(".target", form).map((row) => ({ url: $(".t-url", row).value.trim(), weight: Number($(".t-weight", row).value || 1) })),
    hosts: $("#p-hosts").value.split(",").map((x) => x.trim()).filter(Boolean),
    methods: $$(".p-method", form).filter((c) => c.checked).map((c) => c.value),
    policies: $$(".policy", form).map(readPolicy),
  };
  const res = $("#p-resources").value.trim();
  try { body.resources = res ? JSON.parse(res) : []; } catch (e) {
    throw new ApiError(422, { field: "resources", message: "resources: not valid JSON" });
  }
  return body;
}

function followDeployment(job) {
  const draw = (d) => {
    $("#deployment").innerHTML = `<div class="card" data-status="${esc(d.status)}"><b>${esc(d.action)}</b> to ${esc(d.environment)}:
      ${state(d.status)} ${d.revision != null ? `revision ${esc(d.revision)}` : ""} ${d.error ? `<span class="bad">${esc(d.error)}</span>` : ""}
      <table><tr><th>Gateway</th><th>Pair</th><th>HA state</th><th>Applied revision</th><th>Status</th><th>Last seen</th></tr>
      ${(d.gateways || []).map((g) => `<tr data-gateway="${esc(g.name)}"><td>${esc(g.name)}</td><td>${esc(g.pair)}</td><td>${state(g.state)}</td>
        <td class="num">${esc(g.applied)}</td><td>${state(g.status)}</td><td>${esc(ago(g.last_seen))}</td></tr>`).join("")}</table></div>`;
  };
  draw(job);
  const timer = setInterval(async () => {
    let d;
    try { d = await api("GET", `/api/v1/deployments/${encodeURIComponent(job.id)}`); } catch (e) { return; }
    draw(d);
    if (d.status === "deployed" || d.status === "failed") clearInterval(timer);
  }, 400);
  S.timers.push(timer);
}

// ---------- consumers ----------
async function viewConsumers() {
  const consumers = await api("GET", "/api/v1/consumers");
  const op = can("operator");
  $("#main").innerHTML = `<h1>Consumers</h1><div id="notices"></div>
    ${op ? `<form id="consumer-form" class="grid"><label>Name *</label><div><input type="text" id="c-name" data-field="name"></div>
      <label>Description</label><div><input type="text" id="c-description" data-field="description"></div>
      <span></span><div><button class="primary" type="submit">Create consumer</button></div><span></span><div class="form-error"></div></form>` : ""}
    <table id="consumers"><tr><th>Name</th><th>Description</th><th>API keys</th><th></th></tr>
    ${consumers.map((c) => `<tr data-name="${esc(c.name)}"><td>${esc(c.name)}</td><td>${esc(c.description)}</td>
      <td>${c.keys.map((k) => `<div class="row"><code>${esc(k.id)}</code> <span class="muted">${esc(ago(k.created_at))}</span>
        ${op ? `<button type="button" class="revoke danger" data-key="${esc(k.id)}">Revoke</button>` : ""}</div>`).join("") || `<span class="muted">none</span>`}</td>
      <td>${op ? `<button type="button" class="issue">Issue key</button> <button type="button" class="delete danger">Delete</button>` : ""}</td></tr>`).join("")}</table>`;
  const form = $("#consumer-form");
  if (form) form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", "/api/v1/consumers", { name: $("#c-name").value.trim(), description: $("#c-description").value });
      await viewConsumers();
      $("#main").dataset.ready = location.hash;
    } catch (e) { fieldErrors(form, e); }
  });
  $("#consumers").addEventListener("click", async (ev) => {
    const tr = ev.target.closest("tr[data-name]");
    if (!tr) return;
    const c = encodeURIComponent(tr.dataset.name);
    try {
      if (ev.target.classList.contains("issue")) {
        const k = await api("POST", `/api/v1/consumers/${c}/keys`);
        await viewConsumers();
        showSecret("new-key", `New key for <b>${esc(k.consumer)}</b> (shown once, only its hash is kept):`, k.key);
      } else if (ev.target.classList.contains("revoke")) {
        await api("DELETE", `/api/v1/consumers/${c}/keys/${encodeURIComponent(ev.target.dataset.key)}`);
        await viewConsumers();
      } else if (ev.target.classList.contains("delete")) {
        if (!confirm(`Delete consumer ${tr.dataset.name}?`)) return;
        await api("DELETE", `/api/v1/consumers/${c}`);
        await viewConsumers();
      } else return;
      $("#main").dataset.ready = location.hash;
    } catch (e) { showError(e); }
  });
}

// A secret the API shows once (a new key or token), with a copy button.
function showSecret(id, html, secret) {
  notice(`<div class="notice" id="${id}">${html}
    <span class="secret" id="new-key-value">${esc(secret)}</span> <button type="button" id="copy-key">Copy</button></div>`);
  $("#copy-key").addEventListener("click", () => copy(secret, $("#copy-key")));
}

async function copy(text, button) {
  try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; } catch (e) {
    const r = document.createRange(); r.selectNodeContents($("#new-key-value") || document.body);
    getSelection().removeAllRanges(); getSelection().addRange(r); button.textContent = "Selected: press Ctrl-C";
  }
}

// ---------- gateways ----------
async function viewGateways() {
  $("#main").innerHTML = `<h1>Gateways</h1><div id="notices"></div><div id="gateways"></div>`;
  const draw = async () => {
    const gws = await api("GET", "/api/v1/gateways");
    $("#gateways").innerHTML = `<table><tr><th>Gateway</th><th>Environment</th><th>Pair</th><th>HA state</th><th>Applied revision</th>
      <th>AMS revision</th><th>In sync</th><th>Last seen</th><th>Live</th><th>Queued</th><th>Dead</th></tr>
      ${gws.map((g) => `<tr data-gateway="${esc(g.name)}"><td>${esc(g.name)}</td><td>${esc(g.environment)}</td><td>${esc(g.pair)}</td>
        <td>${state((g.ha && g.ha.state) || g.state)}</td><td class="num">${esc(g.applied)}</td><td class="num">${esc(g.revision)}</td>
        <td>${g.in_sync ? `<span class="ok">yes</span>` : `<span class="bad">no</span>`}</td><td>${esc(ago(g.reported_at || g.last_seen))}</td>
        <td>${yes(g.live)}</td><td class="num">${esc(g.queued)}</td><td class="num">${esc(g.dead)}</td></tr>`).join("")}</table>`;
  };
  await draw();
  every(2000, () => draw().catch(() => {}));
}

// ---------- traffic ----------
function spark(series) {
  const vals = series.map((s) => s.rps || 0);
  const max = Math.max(1e-9, ...vals);
  const w = 120, h = 24;
  const pts = vals.map((v, i) => `${((i / Math.max(1, vals.length - 1)) * w).toFixed(1)},${(h - (v / max) * (h - 2) - 1).toFixed(1)}`).join(" ");
  return `<svg class="spark" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}"><polyline fill="none" stroke="#2457c5" stroke-width="1.5" points="${pts}"/></svg>`;
}

const fmt = (x, d = 1) => (x == null ? "" : Number(x).toFixed(d));
const codes = (o) => Object.entries(o || {}).map(([k, v]) => `${esc(k)}: ${esc(v)}`).join(", ");

async function viewTraffic() {
  $("#main").innerHTML = `<h1>Traffic <span class="muted">last 5 minutes, from the gateways' reports</span></h1><div id="notices"></div><div id="traffic"></div>`;
  const draw = async () => {
    const t = await api("GET", "/api/v1/traffic?minutes=5");
    $("#traffic").innerHTML = t.projects.length ? `<table><tr><th>Project</th><th>Requests/s</th><th></th><th>Requests</th>
      <th>p50 ms</th><th>p99 ms</th><th>Status classes</th><th>Gateway errors</th></tr>
      ${t.projects.map((p) => `<tr data-project="${esc(p.project)}"><td>${esc(p.project)}</td><td class="num">${fmt(p.totals.rps, 2)}</td>
        <td>${spark(p.series)}</td><td class="num requests">${esc(p.totals.requests)}</td><td class="num">${fmt(p.totals.p50_ms)}</td>
        <td class="num">${fmt(p.totals.p99_ms)}</td><td>${codes(p.totals.classes)}</td><td>${codes(p.totals.errors)}</td></tr>`).join("")}</table>`
      : `<p class="muted">No traffic reported in the last ${esc(t.minutes)} minutes.</p>`;
  };
  await draw();
  every(2000, () => draw().catch(() => {}));
}

// ---------- users ----------
async function viewUsers() {
  const users = await api("GET", "/api/v1/users");
  const admin = can("admin");
  $("#main").innerHTML = `<h1>Users</h1><div id="notices"></div>
    ${admin ? `<form id="user-form" class="grid"><label>Name *</label><div><input type="text" id="u-name" data-field="name"></div>
      <label>Role *</label><div><select id="u-role" data-field="role"><option>viewer</option><option>operator</option><option>admin</option></select></div>
      <label>Description</label><div><input type="text" id="u-description" data-field="description"></div>
      <span></span><div><button class="primary" type="submit">Create user</button></div><span></span><div class="form-error"></div></form>` : ""}
    <table id="users"><tr><th>User</th><th>Role</th><th>Description</th><th>Tokens</th><th></th></tr>
    ${users.map((u) => `<tr data-name="${esc(u.name)}"><td>${esc(u.name)}${u.builtin ? ` <span class="muted">(built-in)</span>` : ""}</td>
      <td>${esc(u.role)}</td><td>${esc(u.description)}</td>
      <td>${u.tokens.map((t) => `<div class="row"><code>${esc(t.id)}</code> ${esc(t.name)}
        <span class="muted">${t.expires_at ? `expires ${esc(t.expires_at)}` : ""} ${t.last_used_at ? `used ${esc(ago(t.last_used_at))}` : ""}</span>
        ${admin && !u.builtin ? `<button type="button" class="revoke danger" data-token="${esc(t.id)}">Revoke</button>` : ""}</div>`).join("")}</td>
      <td>${admin && !u.builtin ? `<button type="button" class="issue">Issue token</button> <button type="button" class="delete danger">Delete</button>` : ""}</td></tr>`).join("")}</table>`;
  const shown = (who, token) => showSecret("new-token", `Token for <b>${esc(who)}</b> (shown once):`, token);
  const form = $("#user-form");
  if (form) form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const u = await api("POST", "/api/v1/users", { name: $("#u-name").value.trim(), role: $("#u-role").value, description: $("#u-description").value });
      await viewUsers();
      shown(u.name, u.token);
      $("#main").dataset.ready = location.hash;
    } catch (e) { fieldErrors(form, e); }
  });
  $("#users").addEventListener("click", async (ev) => {
    const tr = ev.target.closest("tr[data-name]");
    if (!tr) return;
    const n = encodeURIComponent(tr.dataset.name);
    try {
      if (ev.target.classList.contains("issue")) {
        const t = await api("POST", `/api/v1/users/${n}/tokens`, { name: `console-${Date.now().toString(36)}` });
        await viewUsers();
        shown(t.user, t.token);
      } else if (ev.target.classList.contains("revoke")) {
        await api("DELETE", `/api/v1/users/${n}/tokens/${encodeURIComponent(ev.target.dataset.token)}`);
        await viewUsers();
      } else if (ev.target.classList.contains("delete")) {
        if (!confirm(`Delete user ${tr.dataset.name} and its tokens?`)) return;
        await api("DELETE", `/api/v1/users/${n}`);
        await viewUsers();
      } else return;
      $("#main").dataset.ready = location.hash;
    } catch (e) { showError(e); }
  });
}

// ---------- audit ----------
async function viewAudit() {
  $("#main").innerHTML = `<h1>Audit trail</h1><div id="notices"></div>
    <div class="toolbar"><input id="a-actor" placeholder="actor"><input id="a-action" placeholder="action (e.g. project.create)">
    <button type="button" id="a-go">Filter</button></div><div id="audit"></div>`;
  const draw = async () => {
    const q = new URLSearchParams({ limit: "200" });
    if ($("#a-actor").value) q.set("actor", $("#a-actor").value);
    if ($("#a-action").value) q.set("action", $("#a-action").value);
    const page = await api("GET", `/api/v1/audit?${q}`);
    $("#audit").innerHTML = `<table><tr><th>At</th><th>Actor</th><th>Action</th><th>Target</th><th>Status</th><th>Request id</th></tr>
      ${page.entries.map((e) => `<tr><td>${esc(e.at)}</td><td>${esc(e.actor)}</td><td>${esc(e.action)}</td><td><code>${esc(e.target)}</code></td>
        <td class="${e.status === "accepted" ? "ok" : "bad"}">${esc(e.status)}${e.http_status ? ` (${esc(e.http_status)})` : ""}</td>
        <td><code>${esc(e.request_id)}</code></td></tr>`).join("")}</table>`;
  };
  $("#a-go").addEventListener("click", () => draw().catch((e) => showError(e)));
  await draw();
}

// ---------- configuration ----------
async function viewConfig() {
  $("#main").innerHTML = `<h1>Configuration</h1><div id="notices"></div>
    <div class="card"><h2>Export</h2><p class="muted">The whole configuration as one declarative document (needs role operator).</p>
      <button type="button" id="export">Download export</button></div>
    <div class="card"><h2>Import</h2><p class="muted">Applies a document made by an export (needs role admin).</p>
      <input type="file" id="import-file" accept=".json"> <label><input type="checkbox" id="prune"> also delete what the document leaves out</label>
      <button type="button" id="import">Import</button></div>`;
  $("#export").addEventListener("click", async () => {
    try {
      const doc = await api("GET", "/api/v1/export");
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" }));
      a.download = `tandem-export-${new Date().toISOString().slice(0, 19)}.json`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    } catch (e) { showError(e); }
  });
  $("#import").addEventListener("click", async () => {
    const file = $("#import-file").files[0];
    if (!file) return showError("choose an export document first");
    try {
      const r = await api("POST", `/api/v1/import?prune=${$("#prune").checked}`, await file.text(), "application/json");
      notice(`<div class="notice">Imported: ${esc(r.projects)} projects, ${esc(r.consumers)} consumers (lsn ${esc(r.lsn)}).</div>`);
    } catch (e) { showError(e); }
  });
}

// ---------- start ----------
async function start() {
  window.addEventListener("hashchange", render);
  $("#signout").addEventListener("click", async () => {
    try { await api("DELETE", "/api/v1/session"); } catch (e) { /* ended anyway */ }
    showSignIn("Signed out.");
  });
  setInterval(pollHA, 1000);
  let me;
  try { me = await api("GET", "/api/v1/session"); } catch (e) {
    if (e.status === 401) showSignIn();
    return;
  }
  signedIn(me);
  pollHA();
}

document.addEventListener("DOMContentLoaded", start);
