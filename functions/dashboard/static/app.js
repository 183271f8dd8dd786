// The supaflow dashboard: plain DOM, no framework, no CDN. Every piece of data is put on
// the page as text (textContent), never as HTML. It calls the same API as any client,
// with the signed-in user's token: users see their own jobs, admins their tenant's.
"use strict";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const state = { token: sessionStorage.getItem("supaflow-token"), cursor: null, timer: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function say(text) { $("message").textContent = text || ""; }

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "Authorization": `Bearer ${state.token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401) signOut();
    throw new Error((answer.error && answer.error.message) || `HTTP ${response.status}`);
  }
  return answer;
}

function claims(token) {
  try {
    return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
  } catch { return {}; }
}

function signIn(token) {
  state.token = token;
  sessionStorage.setItem("supaflow-token", token);
  route();
}

function signOut() {
  state.token = null;
  sessionStorage.removeItem("supaflow-token");
  route();
}

function show(section) {
  for (const id of ["sign-in", "jobs", "job"]) $(id).hidden = id !== section;
  clearTimeout(state.timer);
}

async function route() {
  say("");
  if (!state.token) {
    show("sign-in");
    $("who").textContent = "";
    $("sign-out").hidden = true;
    const local = await fetch("/_stack/sign-in").then((r) => r.ok).catch(() => false);
    $("local").hidden = !local;
    return;
  }
  const me = claims(state.token);
  $("who").textContent = me.email || me.sub || me.role || "";
  $("sign-out").hidden = false;
  const match = location.hash.match(/^#job\/([0-9a-f-]{36})$/);
  try {
    if (match) await showJob(match[1]); else await showJobs(null);
  } catch (err) { say(err.message); }
}

// Jobs, filtered and paged on the server ------------------------------------------------

async function showJobs(cursor) {
  show("jobs");
  if (!cursor) await Promise.all([showOverview(), showAlerts()]);
  const query = new URLSearchParams({ limit: "50", scope: $("job-scope").value });
  if ($("status").value) query.set("status", $("status").value);
  if ($("workflow").value.trim()) query.set("workflow_id", $("workflow").value.trim());
  if (cursor) query.set("cursor", cursor);
  const page = await call("GET", `/jobs?${query}`);
  const rows = $("job-rows");
  rows.replaceChildren(...page.jobs.map((job) => el("tr", { "data-status": job.status },
    el("td", {}, el("a", { href: `#job/${job.job_id}` }, job.job_id)),
    el("td", {}, job.workflow_id),
    el("td", { class: `status ${job.status}` }, job.status),
    el("td", {}, job.origin || ""),
    el("td", {}, new Date(job.created_at).toLocaleString()))));
  state.cursor = page.next_cursor;
  $("next-page").hidden = !page.next_cursor;
}

// The overview: counts, throughput and failures per minute, alerts ---------------------

async function showOverview() {
  const stats = await call("GET", "/stats");
  $("scope").textContent = { all: "(everyone's jobs)", tenant: "(your tenant's jobs)",
                             own: "(your jobs)" }[stats.scope] || "";
  const counts = stats.counts || {};
  $("counts").replaceChildren(...["pending", "running", "awaiting_retry", "completed", "failed",
                                   "cancelled"].map((status) =>
    el("li", { class: `status ${status}`, "data-status": status },
       `${status.replace("_", " ")}: ${counts[status] || 0}`)));
  const minutes = stats.minutes;
  const finished = minutes.reduce((n, m) => n + m.finished, 0);
  const failed = minutes.reduce((n, m) => n + m.failed, 0);
  $("failure-rate").textContent = finished ? `${Math.round((100 * failed) / finished)}%` : "-";
  barChart($("throughput"), minutes, [["finished", "finished"], ["failed", "failed"]]);
  $("queue-chart").hidden = !stats.queue;
  if (stats.queue) {
    barChart($("queue"), stats.queue.map((q) => ({
      minute: q.minute, depth: q.pending_jobs + q.running_jobs + q.awaiting_retry_jobs })),
      [["depth", "depth"]]);
  }
}

// Bars per minute over the last hour; each series drawn over the previous one.
function barChart(chart, rows, series) {
  const width = 600, height = 120, slot = width / 60;
  const top = Math.max(1, ...rows.map((r) => r[series[0][0]]));
  const start = Date.now() - 59 * 60_000;
  const bars = [];
  for (const row of rows) {
    const x = Math.max(0, Math.floor((Date.parse(row.minute) - start) / 60_000) + 1) * slot;
    for (const [key, cls] of series) {
      const h = (row[key] / top) * (height - 10);
      bars.push(svg("rect", { x, y: height - h, width: slot - 1, height: h, class: cls }));
    }
  }
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  chart.setAttribute("width", width);
  chart.setAttribute("height", height);
  chart.replaceChildren(...bars);
}

async function showAlerts() {
  let alerts;
  try {
    alerts = (await call("GET", "/alerts")).alerts;
  } catch {
    $("alerts").hidden = true;  // only operators see alerts
    return;
  }
  $("alerts").hidden = alerts.length === 0;
  $("alert-list").replaceChildren(...alerts.map((a) => el("li", { "data-rule": a.rule_id },
    `${a.rule_id}${a.subject ? ` (${a.subject})` : ""}: ${a.description || a.kind}`
      + ` - value ${Math.round(a.value * 1000) / 1000} over ${a.threshold},`
      + ` since ${new Date(a.fired_at).toLocaleTimeString()}`)));
}

// One job: its DAG, its timeline, cancel and retry ------------------------------------

function layout(steps) {
  const depth = {};
  const byId = Object.fromEntries(steps.map((s) => [s.step_id, s]));
  const depthOf = (id, seen = new Set()) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const deps = (byId[id] && byId[id].depends_on) || [];
    depth[id] = deps.length ? 1 + Math.max(...deps.map((d) => depthOf(d, seen))) : 0;
    return depth[id];
  };
  const rows = {};
  const at = {};
  for (const step of steps) {
    const column = depthOf(step.step_id);
    rows[column] = (rows[column] || 0) + 1;
    at[step.step_id] = { x: 20 + column * 200, y: 20 + (rows[column] - 1) * 70 };
  }
  return at;
}

function drawDag(steps) {
  const dag = $("dag");
  const at = layout(steps);
  const width = Math.max(...Object.values(at).map((p) => p.x), 0) + 180;
  const height = Math.max(...Object.values(at).map((p) => p.y), 0) + 60;
  dag.setAttribute("viewBox", `0 0 ${width} ${height}`);
  dag.setAttribute("width", width);
  dag.setAttribute("height", height);
  const parts = [];
  for (const step of steps) {
    for (const dep of step.depends_on || []) {
      if (!at[dep]) continue;
      parts.push(svg("line", { x1: at[dep].x + 150, y1: at[dep].y + 20, x2: at[step.step_id].x,
                               y2: at[step.step_id].y + 20, class: "edge" }));
    }
  }
  for (const step of steps) {
    const { x, y } = at[step.step_id];
    const node = svg("g", { class: `node ${step.status}`, "data-step": step.step_id,
                            "data-status": step.status });
    node.append(svg("rect", { x, y, width: 150, height: 40, rx: 6 }),
                svg("text", { x: x + 8, y: y + 17 }, step.step_id),
                svg("text", { x: x + 8, y: y + 33, class: "small" },
                    `${step.status} (attempt ${step.attempt})`));
    if (step.error) node.append(svg("title", {}, step.error));
    parts.push(node);
  }
  dag.replaceChildren(...parts);
}

async function showJob(id) {
  show("job");
  const [job, events] = await Promise.all([call("GET", `/jobs/${id}`),
                                           call("GET", `/jobs/${id}/events?limit=200`)]);
  $("job-id").textContent = job.job_id;
  $("job-status").textContent = job.status;
  $("job-status").className = `status ${job.status}`;
  $("job-error").textContent = job.error_message || "";
  $("cancel").hidden = TERMINAL.has(job.status);
  $("retry").hidden = !["failed", "cancelled"].includes(job.status);
  drawDag(job.steps || []);
  $("events").replaceChildren(...events.events.map((e) => el("li", {},
    el("time", {}, new Date(e.created_at).toLocaleTimeString()), " ",
    `${e.event_type}${e.step_id ? ` ${e.step_id}` : ""}${e.attempt ? ` #${e.attempt}` : ""}`
      + `${e.detail && e.detail.error ? `: ${e.detail.error}` : ""}`)));
  if (!TERMINAL.has(job.status)) state.timer = setTimeout(() => route(), 1000);
}

async function act(verb) {
  const id = $("job-id").textContent;
  try {
    await call("POST", `/jobs/${id}/${verb}`);
    await route();
  } catch (err) { say(err.message); }
}

// Wiring -------------------------------------------------------------------------------

$("use-token").addEventListener("click", () => signIn($("token").value.trim()));
$("local-sign-in").addEventListener("click", async () => {
  const response = await fetch("/_stack/sign-in", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email: $("local-email").value, admin: $("local-admin").checked }),
  });
  const answer = await response.json();
  if (response.ok) signIn(answer.token); else say(answer.error ? answer.error.message : "failed");
});
$("sign-out").addEventListener("click", signOut);
$("filters").addEventListener("submit", (event) => { event.preventDefault(); showJobs(null).catch((e) => say(e.message)); });
$("next-page").addEventListener("click", () => showJobs(state.cursor).catch((e) => say(e.message)));
$("cancel").addEventListener("click", () => act("cancel"));
$("retry").addEventListener("click", () => act("retry"));
window.addEventListener("hashchange", route);
route();
