"use strict";
// The operator's page: state from /api/state, then live updates as server-sent events from /events.
const $ = (id) => document.getElementById(id);
const cams = {};            // camera -> {el, scores: [[wall_ns, score, threshold, verdict]], lastImage: 0}
let state = { password: false, frames: false, user: null };
let galleryLoaded = false;

async function api(path, body) {
  const options = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

const fmt = (v, digits = 4) => (v === null || v === undefined) ? "–" : Number(v).toPrecision(digits);
const when = (ns) => new Date(ns / 1e6).toLocaleString();
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

// ------------------------------------------------------------------------------------------ live
function camera(name) {
  if (cams[name]) return cams[name];
  $("no-cameras")?.remove();
  const card = el("div", { class: "card", id: `cam-${name}`, "data-testid": `camera-${name}` });
  card.innerHTML = `<h2><span>${name}</span><span class="health bad" data-testid="health">no heartbeat</span></h2>
    <div><span class="verdict" data-testid="verdict">–</span> <span class="small">frame <b data-testid="frame">–</b></span></div>
    <div class="small">score <b data-testid="score">–</b> / threshold <b data-testid="threshold">–</b>
      · <span data-testid="fps">0.0</span> frames/s</div>
    <div class="bar"><div class="fill"></div><div class="cut"></div></div>
    <div class="small muted" data-testid="reason"></div>
    <img alt="latest anomaly map" data-testid="live-image">
    <canvas class="strip" width="600" height="120" data-testid="strip"></canvas>
    <div class="small" data-testid="drift"></div>
    <div class="small muted" data-testid="counters"></div>`;
  $("cameras").append(card);
  cams[name] = { el: card, scores: [], lastImage: 0, pendingImage: null };
  return cams[name];
}

function showDecision(d) {
  const c = camera(d.camera);
  const q = (sel) => c.el.querySelector(`[data-testid=${sel}]`);
  const v = q("verdict");
  v.textContent = d.verdict.toUpperCase();
  v.className = `verdict ${d.verdict}`;
  v.dataset.seq = d.seq;
  q("frame").textContent = d.frame_id;
  q("score").textContent = fmt(d.score);
  q("threshold").textContent = fmt(d.threshold);
  q("reason").textContent = d.reason;
  const fill = c.el.querySelector(".fill"), cut = c.el.querySelector(".cut");
  if (d.score !== null && d.threshold) {
    const top = Math.max(d.threshold * 2, d.score);
    fill.style.width = `${Math.max(0, Math.min(100, (d.score / top) * 100))}%`;
    fill.classList.toggle("over", d.score > d.threshold);
    cut.style.left = `${(d.threshold / top) * 100}%`;
  } else fill.style.width = "0";
  c.scores.push([d.wall_ns, d.score, d.threshold, d.verdict]);
  if (c.scores.length > 600) c.scores.shift();
  drawStrip(c.el.querySelector("canvas"), c.scores);
  if (d.verdict !== "ok" && galleryLoaded) addThumb(d);
}

function refreshImage(name) {
  // at most 4 images a second per camera: a phone on Wi-Fi must keep up with a 200 frames/s line
  const c = cams[name];
  if (c.pendingImage) return;
  const wait = Math.max(0, 250 - (Date.now() - c.lastImage));
  c.pendingImage = setTimeout(() => {
    c.pendingImage = null; c.lastImage = Date.now();
    const which = state.frames && $("overlay").checked ? "frame.png?overlay=1&" : "map.png?";
    c.el.querySelector("img").src = `/api/live/${name}/${which}t=${Date.now()}`;
  }, wait);
}

function showHealth(h) {
  const c = camera(h.camera);
  const q = (sel) => c.el.querySelector(`[data-testid=${sel}]`);
  const health = q("health");
  const source = h.source ? `camera ${h.source}` : "";
  health.textContent = h.healthy ? `healthy · ${source || h.state}` : `UNHEALTHY · ${h.state}${source ? " · " + source : ""}`;
  health.className = `health ${h.healthy ? "good" : "bad"}`;
  q("fps").textContent = h.fps.toFixed(1);
  const d = h.drift;
  if (d) {
    const figures = d.ks === null ? (d.reason || "") :
      `KS ${fmt(d.ks, 3)} (drifting above ${fmt(d.ks_drifting, 3)}) · ${(100 * d.above_p95).toFixed(1)} % of passes above the calibration's 95th percentile`;
    const advice = { drifting: " — scores of good parts are moving: check the light, the lens and the camera mount; a new material lot needs a recalibration",
                     drifted: " — recalibrate on current good parts (hlgfa calibrate, then SIGHUP), or fix the light/camera first" }[d.state] || "";
    q("drift").textContent = `drift: ${d.state} · ${figures}${advice}`;
    q("drift").className = `small ${d.state === "drifted" || d.state === "drifting" ? "error" : "muted"}`;
  }
  if (h.counters) q("counters").textContent =
    `since start: ${h.counters.frames} frames · ok ${h.counters.ok} · reject ${h.counters.reject} · fault ${h.counters.fault} · dropped ${h.counters.dropped}`;
}

function drawStrip(canvas, scores) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  const points = scores.filter((s) => s[1] !== null);
  const thresholds = scores.map((s) => s[2]).filter((t) => t !== null);
  if (!points.length) return;
  const threshold = thresholds[thresholds.length - 1];
  let lo = Math.min(...points.map((p) => p[1]), threshold), hi = Math.max(...points.map((p) => p[1]), threshold);
  if (hi <= lo) hi = lo + 1;
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const y = (v) => H - ((v - lo) / (hi - lo)) * H;
  ctx.strokeStyle = "#111"; ctx.setLineDash([6, 4]); ctx.beginPath();
  ctx.moveTo(0, y(threshold)); ctx.lineTo(W, y(threshold)); ctx.stroke(); ctx.setLineDash([]);
  ctx.fillStyle = "#111"; ctx.font = "12px sans-serif"; ctx.fillText(`threshold ${fmt(threshold)}`, 4, y(threshold) - 4);
  const n = scores.length;
  scores.forEach((s, i) => {
    const x = (i + 0.5) * (W / Math.max(n, 1));
    if (s[1] === null) { ctx.fillStyle = "#b26a00"; ctx.fillRect(x - 1.5, H - 8, 3, 8); return; }
    ctx.fillStyle = s[3] === "ok" ? "#1b873f" : "#c62828";
    ctx.fillRect(x - 2.5, y(s[1]) - 2.5, 5, 5);
  });
}

function showRecorder(r) {
  if (!r) return;
  $("recorder").textContent = `recorded ${r.records} · maps ${r.images} · lost on the wire ${r.lost}` +
    ` · dropped ${r.dropped_records} records, ${r.dropped_images} maps · ${(r.bytes / 2 ** 20).toFixed(1)} MiB`;
  const alarms = [];
  if (r.disk_alarm) alarms.push(`Records: ${r.disk_alarm}`);
  if (!r.alive) alarms.push(`The recorder stopped${r.error ? ": " + r.error : ""}; restart the view`);
  $("alarm").hidden = !alarms.length;
  $("alarm").textContent = alarms.join(" · ");
}

function connect() {
  const source = new EventSource("/events");
  source.onopen = () => { $("link").textContent = "live"; $("link").className = "pill good"; };
  source.onerror = () => { $("link").textContent = "reconnecting…"; $("link").className = "pill bad"; };
  source.addEventListener("decision", (e) => showDecision(JSON.parse(e.data)));
  source.addEventListener("map", (e) => refreshImage(JSON.parse(e.data).camera));
  source.addEventListener("health", (e) => showHealth(JSON.parse(e.data)));
  source.addEventListener("tick", (e) => { const t = JSON.parse(e.data); t.health.forEach(showHealth); showRecorder(t.recorder); });
  source.addEventListener("review", (e) => {
    const r = JSON.parse(e.data);
    document.querySelector(`.thumb[data-id="${r.id}"]`)?.classList.add("reviewed");
  });
}

// --------------------------------------------------------------------------------------- rejects
function thumb(row) {
  const button = el("button", { class: `thumb${row.review ? " reviewed" : ""}`, "data-id": row.id ?? "",
                                "data-testid": "thumb", onclick: () => openDetail(row.id) });
  const img = el("img", { alt: "", loading: "lazy" });
  // a live reject's map is written a moment after its decision: try again a few times
  let tries = 0;
  img.onerror = () => { if (++tries <= 4) setTimeout(() => { img.src = `/api/records/${row.id}/map.png?try=${tries}`; }, 700 * tries); };
  img.src = `/api/records/${row.id}/map.png`;
  button.append(img, el("div", {}, el("span", { class: `tag ${row.verdict}` }, row.verdict), ` ${row.camera} #${row.frame_id}`),
                el("div", { class: "muted" }, `${fmt(row.score, 3)} · ${when(row.wall_ns)}`));
  return button;
}

function addThumb(d) {
  if (d.id === null) return;
  if (d.verdict === "fault" && !$("f-faults").checked) return;
  const reason = $("f-reason").value.trim();
  if (reason && !d.reason.includes(reason)) return;
  $("gallery").prepend(thumb(d));
  while ($("gallery").children.length > 500) $("gallery").lastChild.remove();
}

async function loadGallery() {
  const params = new URLSearchParams({ limit: "200" });
  params.append("verdict", "reject");
  if ($("f-faults").checked) params.append("verdict", "fault");
  if ($("f-since").value) params.set("since", $("f-since").value);
  if ($("f-reason").value.trim()) params.set("reason", $("f-reason").value.trim());
  const rows = await api(`/api/records?${params}`);
  $("gallery").replaceChildren(...rows.map(thumb));
  galleryLoaded = true;
}

let current = null;
async function openDetail(id, attempt = 0) {
  const row = await api(`/api/records/${id}`);
  if (attempt && current?.id !== id) return;
  current = row;
  // a reject's map is stored just after its decision: look again shortly if it is not there yet
  if (!row.image && row.verdict === "reject" && attempt < 5) setTimeout(() => openDetail(id, attempt + 1), 800);
  $("d-title").textContent = `${row.camera} · frame ${row.frame_id} · ${row.verdict.toUpperCase()}`;
  $("d-map").src = row.image ? `/api/records/${id}/map.png` : "";
  $("d-map").hidden = !row.image;
  $("d-frame").hidden = !row.has_frame;
  if (row.has_frame) $("d-frame").src = `/api/records/${id}/frame.png?overlay=1&map=${row.image ? 1 : 0}`;
  const fields = [["time", when(row.wall_ns)], ["score", fmt(row.score, 6)], ["threshold", fmt(row.threshold, 6)],
    ["reason", row.reason || "–"], ["largest region", `${row.region_px} px`], ["latency", `${fmt(row.latency_ms, 3)} ms`],
    ["thresholds version", row.thresholds_version], ["model", row.model_hash.slice(0, 16)],
    ["session / seq", `${row.session} / ${row.seq}`], ["record", `#${row.id}`]];
  $("d-fields").replaceChildren(...fields.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, String(v)))));
  showReview(row);
  $("d-error").textContent = "";
  if (!$("detail").open) $("detail").showModal();
}

function showReview(row) {
  $("d-reviewed").textContent = row.review ?
    `Reviewed: ${row.review.replace("_", " ")}${row.review_label ? " (" + row.review_label + ")" : ""} by ${row.reviewer}, ${when(row.reviewed_ns)}` :
    (state.user ? "Not reviewed yet." : "Sign in with your name (top right) to review.");
  const rejected = row.verdict !== "ok";
  $("r-good").hidden = !rejected; $("r-defect").hidden = !rejected; $("r-missed").hidden = rejected;
}

async function review(kind) {
  try {
    const row = await api(`/api/records/${current.id}/review`, { review: kind, label: $("r-label").value.trim() || null });
    current = row; showReview(row); $("d-error").textContent = "";
  } catch (error) { $("d-error").textContent = error.message; }
}

// ---------------------------------------------------------------------------------------- trends
async function loadTrends() {
  const t = await api("/api/trends?hours=24");
  $("hours").tBodies[0].replaceChildren(...t.hours.map((h) => el("tr", {},
    el("td", {}, new Date(h.hour_ns / 1e6).toLocaleString([], { dateStyle: "short", timeStyle: "short" })),
    ...["ok", "reject", "fault", "false_reject", "defect_confirmed", "missed_defect"].map((k) => el("td", {}, String(h[k]))))));
  $("frr").textContent = t.false_reject_share === null ?
    `${t.rejected} rejected or faulted in 24 h; none reviewed yet.` :
    `${t.rejected} rejected or faulted in 24 h; of ${t.false_rejects + t.confirmed} reviewed, ${(100 * t.false_reject_share).toFixed(1)} % were good parts (false rejects).`;
  $("charts").replaceChildren(...Object.entries(cams).map(([name, c]) => {
    const canvas = el("canvas", { width: 1200, height: 200 });
    drawStrip(canvas, c.scores);
    return el("div", {}, el("h2", {}, `${name}: score of the last ${c.scores.length} parts`), canvas);
  }));
}

// ------------------------------------------------------------------------------------------ wiring
function showUser() {
  $("login").hidden = !!state.user; $("signed-in").hidden = !state.user;
  $("user").textContent = state.user || "";
  $("login-password").hidden = !state.password; $("login-password").required = state.password;
}

async function start() {
  try {
    state = await api("/api/state");
  } catch (error) {
    state.user = null; showUser();
    $("link").textContent = error.message;
    return;
  }
  showUser();
  for (const [name, c] of Object.entries(state.cameras)) {
    camera(name).scores = [];
    c.scores.forEach(([wall_ns, score, threshold, verdict]) => cams[name].scores.push([wall_ns, score, threshold, verdict]));
    if (c.last) { cams[name].scores.pop(); showDecision(c.last); }
    showHealth(c.health);
    if (c.map_frame_id !== null) refreshImage(name);
  }
  showRecorder(state.recorder);
  connect();
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const r = await api("/api/login", { name: $("login-name").value, password: $("login-password").value });
    const first = !state.cameras;
    state.user = r.user; showUser();
    if (first) start();
  } catch (error) { alert(error.message); }
});
$("logout").addEventListener("click", async () => { await api("/api/logout", {}); state.user = null; showUser(); });
$("filter").addEventListener("submit", (e) => { e.preventDefault(); loadGallery(); });
$("find").addEventListener("click", async () => {
  const rows = await api(`/api/records?frame=${encodeURIComponent($("f-frame").value)}&limit=1`);
  if (rows.length) openDetail(rows[0].id); else alert(`frame ${$("f-frame").value}: not in the records`);
});
document.querySelectorAll("#d-review button").forEach((b) => b.addEventListener("click", () => review(b.dataset.review)));
document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("nav button").forEach((o) => o.classList.toggle("active", o === b));
  document.querySelectorAll("main > section").forEach((s) => { s.hidden = s.id !== `tab-${b.dataset.tab}`; });
  if (b.dataset.tab === "rejects") loadGallery();
  if (b.dataset.tab === "trends") loadTrends();
}));
start();
