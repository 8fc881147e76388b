"use strict";
// The operator's page: the state from /api/state, then batched live updates (server-sent events from
// /events). Updates only change `model`; the page is drawn at most once per display frame (render()).
const $ = (id) => document.getElementById(id);
const RED_AFTER_S = 3;           // no message from the view for this long: the page says it lost it
const TRENDS_EVERY_MS = 15000;
const model = { cameras: {}, box: { level: "bad", problems: ["connecting to the view…"] }, shift: null,
                recorder: null, link: false, lastMessage: 0 };
let state = { password: false, engineer_password: false, frames: [], user: null, role: null, scale: null };
// parts recorded while the gallery is being fetched: the fetch may have missed them, so they join it after
let galleryLoaded = false, recordedDuringLoad = null, oldest = null, trendsTimer = null, current = null, drawQueued = false;

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
const pct = (n, d) => d ? `${(100 * n / d).toFixed(1)} %` : "–";
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}
function age(s) {
  if (s === null || s === undefined) return "";
  return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}
const engineer = () => state.role === "engineer";
const hasFrames = (camera) => state.frames.includes(camera);

let lastDraw = 0;
function schedule() {
  // draw now when the last drawing is a display frame old (a quiet line: no added wait); else at the
  // next display frame, once, however many updates came in between
  if (drawQueued) return;
  if (performance.now() - lastDraw > 16) { render(); return; }
  drawQueued = true;
  requestAnimationFrame(() => { drawQueued = false; render(); });
}

// ----------------------------------------------------------------------------------- the legend
function legends() {
  const s = state.scale;
  if (!s) return;
  for (const node of document.querySelectorAll(".legend")) {
    const bar = el("span", { class: "scale", title: "one scale for every frame: colour = score / threshold" });
    bar.style.background = `linear-gradient(to right, ${s.neutral[0]}, ${s.neutral[1]} 40%, ${s.colours.map((c, i) =>
      `${c} ${40 + 60 * i / (s.colours.length - 1)}%`).join(", ")})`;
    node.replaceChildren(el("span", {}, "0"), bar, el("span", {}, `threshold … ${s.top}× · ▭ region above the threshold`));
  }
}

// ------------------------------------------------------------------------------------------ live
function camera(name) {
  if (model.cameras[name]) return model.cameras[name];
  $("no-cameras")?.remove();
  const q = {};
  const part = (key, tag, attrs = {}, ...children) => (q[key] = el(tag, { "data-testid": key, ...attrs }, ...children));
  const img = part("live-image", "img", { alt: "the latest part", class: "zoomable" });
  img.onerror = () => { img.hidden = true; };
  img.onload = () => { img.hidden = false; };
  const card = el("div", { class: "card", id: `cam-${name}`, "data-testid": `camera-${name}` },
    el("h2", {}, el("span", {}, name), part("health", "span", { class: "health bad" }, "no heartbeat")),
    part("problems", "div", { class: "small problems" }),
    el("div", {}, part("verdict", "span", { class: "verdict" }, "–"), " ", part("age", "span", { class: "small muted" })),
    el("div", { class: "small" }, "frame ", part("frame", "b", {}, "–"), " · part ", part("part", "b", {}, "–"),
       " · score ", part("score", "b", {}, "–"), " / threshold ", part("threshold", "b", {}, "–"),
       " · ", part("fps", "span", {}, "0.0"), " frames/s"),
    el("div", { class: "bar" }, part("fill", "div", { class: "fill" }), part("cut", "div", { class: "cut" })),
    part("reason", "div", { class: "small reason" }),
    img,
    part("strip", "canvas", { class: "strip", width: 600, height: 120 }),
    part("drift", "div", { class: "small" }),
    part("counters", "div", { class: "small muted" }));
  $("cameras").append(card);
  const option = el("option", { value: name }, name);
  $("find-camera").append(option);
  model.cameras[name] = { el: card, q, scores: [], last: null, health: null, lastImage: 0, pendingImage: null,
                          receivedAt: 0, dirty: true };
  return model.cameras[name];
}

function onDecision(d) {
  const c = camera(d.camera);
  if (c.last && c.last.session === d.session && d.seq <= c.last.seq) return;  // already in the state loaded
  c.last = d; c.receivedAt = performance.now(); c.dirty = true;
  c.scores.push([d.wall_ns, d.score, d.threshold, d.verdict]);
  if (c.scores.length > 600) c.scores.splice(0, c.scores.length - 600);
  if (model.shift) {
    const s = model.shift.cameras[d.camera] || (model.shift.cameras[d.camera] = { ok: 0, reject: 0, fault: 0, worst_latency_ms: 0 });
    s[d.verdict] += 1; s.worst_latency_ms = Math.max(s.worst_latency_ms, d.latency_ms);
  }
}

function onHealth(h) { camera(h.camera).health = h; }

function refreshImage(name) {
  // at most 4 images a second per camera: a phone on Wi-Fi must keep up with a 200 frames/s line
  const c = model.cameras[name];
  if (!c || c.pendingImage) return;
  const wait = Math.max(0, 250 - (Date.now() - c.lastImage));
  c.pendingImage = setTimeout(() => {
    c.pendingImage = null; c.lastImage = Date.now();
    const which = hasFrames(name) ? `frame.png?overlay=${$("overlay").checked ? 1 : 0}&` : "map.png?";
    c.q["live-image"].src = `/api/live/${name}/${which}t=${Date.now()}`;
  }, wait);
}

function drawCamera(name, c) {
  const q = c.q, h = c.health, d = c.last;
  if (d && c.dirty) {
    c.dirty = false;
    q.verdict.textContent = d.verdict.toUpperCase();
    q.verdict.dataset.seq = d.seq;
    q.frame.textContent = d.frame_id;
    q.part.textContent = d.part_id ?? "–";
    q.score.textContent = fmt(d.score);
    q.threshold.textContent = fmt(d.threshold);
    q.reason.textContent = d.reason;
    q.reason.className = `small reason ${d.verdict}`;
    if (d.score !== null && d.threshold) {
      const top = Math.max(d.threshold * 2, d.score);
      q.fill.style.width = `${Math.max(0, Math.min(100, (d.score / top) * 100))}%`;
      q.fill.classList.toggle("over", d.score > d.threshold);
      q.cut.style.left = `${(d.threshold / top) * 100}%`;
    } else q.fill.style.width = "0";
    drawStrip(q.strip, c.scores);
  }
  const ageS = d ? (performance.now() - c.receivedAt) / 1000 : null;
  const fps = h ? h.fps : 0;
  // stale: the daemon is not healthy, or nothing came for much longer than the line's own rhythm
  const stale = !model.link || !h || h.level === "bad" || (ageS !== null && ageS > Math.max(3, 10 / Math.max(fps, 0.01)));
  q.verdict.className = `verdict ${d ? d.verdict : ""}${stale ? " stale" : ""}`;
  q.age.textContent = d ? age(ageS) : "";
  if (h) {
    const level = model.link ? h.level : "bad";
    q.health.textContent = level === "ok" ? `healthy · ${h.source ? "camera " + h.source : h.state}` :
      level === "warn" ? "ATTENTION" : "STOP";
    q.health.className = `health ${level === "ok" ? "good" : level}`;
    q.health.dataset.level = level;
    q.problems.textContent = model.link ? h.problems.join(" · ") : "the page lost its connection to the view";
    q.fps.textContent = h.fps.toFixed(1);
    const drift = h.drift;
    if (drift) {
      const figures = drift.ks === null || drift.ks === undefined ? (drift.reason || "") :
        `KS ${fmt(drift.ks, 3)} (drifting above ${fmt(drift.ks_drifting, 3)}) · ${(100 * drift.above_p95).toFixed(1)} % of passes above the calibration's 95th percentile`;
      const advice = { drifting: " — scores of good parts are moving: check the light, the lens and the camera mount; a new material lot needs a recalibration",
                       drifted: " — recalibrate on current good parts (hlgfa calibrate, then SIGHUP), or fix the light/camera first" }[drift.state] || "";
      q.drift.textContent = `drift: ${drift.state} · ${figures}${advice}`;
      q.drift.className = `small drift ${drift.state}`;
    }
    if (h.counters) q.counters.textContent =
      `daemon since start: ${h.counters.frames} frames · ok ${h.counters.ok} · reject ${h.counters.reject} · fault ${h.counters.fault} · dropped ${h.counters.dropped}`;
  }
}

function drawStrip(canvas, scores) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  const points = scores.filter((s) => s[1] !== null);
  const thresholds = scores.map((s) => s[2]).filter((t) => t !== null);
  if (!points.length) return;
  const threshold = thresholds[thresholds.length - 1];
  let lo = Math.min(threshold, ...points.map((p) => p[1])), hi = Math.max(threshold, ...points.map((p) => p[1]));
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

// ---------------------------------------------------------------------------- the line's state
const RANK = { ok: 0, warn: 1, bad: 2 };
function drawBanner() {
  // the box's state as of the last tick, and each camera's as of its latest message (a dead daemon's
  // link event comes between ticks)
  const cams = Object.entries(model.cameras).filter(([, c]) => c.health);
  let level = cams.reduce((worst, [, c]) => RANK[c.health.level] > RANK[worst] ? c.health.level : worst, model.box.level);
  let problems = [...new Set([...cams.flatMap(([name, c]) => c.health.problems.map((p) => `${name}: ${p}`)), ...model.box.problems])];
  if (!model.link) { level = "bad"; problems = ["the page lost its connection to the view: what it shows is old", ...problems]; }
  const banner = $("banner");
  banner.className = `banner ${level}`;
  banner.dataset.level = level;
  $("banner-title").textContent = { ok: "LINE OK", warn: "ATTENTION", bad: "STOP" }[level];
  $("banner-text").textContent = problems.length ? problems.join(" · ") : `${Object.keys(model.cameras).length} camera(s) healthy, recording`;
  $("link").textContent = model.link ? "live" : "reconnecting…";
  $("link").className = `pill ${model.link ? "good" : "bad"}`;
}

function drawShift() {
  const s = model.shift;
  if (!s) return;
  const rows = [], total = { ok: 0, reject: 0, fault: 0, worst_latency_ms: 0, ppm: 0 };
  for (const [name, counts] of Object.entries(s.cameras)) {
    const ppm = model.cameras[name]?.health?.ppm ?? 0;
    rows.push([name, { ...counts, ppm }]);
    for (const k of ["ok", "reject", "fault", "ppm"]) total[k] += k === "ppm" ? ppm : counts[k];
    total.worst_latency_ms = Math.max(total.worst_latency_ms, counts.worst_latency_ms);
  }
  if (rows.length > 1) rows.push(["all", total]);
  $("shift-table").tBodies[0].replaceChildren(...rows.map(([name, c]) => {
    const n = c.ok + c.reject + c.fault;
    return el("tr", { "data-testid": `shift-${name}` }, el("th", {}, name), el("td", {}, String(c.ok)),
      el("td", {}, String(c.reject)), el("td", {}, String(c.fault)), el("td", {}, pct(c.ok, n)),
      el("td", {}, pct(c.reject, n)), el("td", {}, c.ppm.toFixed(0)), el("td", {}, `${fmt(c.worst_latency_ms, 3)} ms`));
  }));
  $("shift-since").textContent = `since ${when(s.since.wall_ns)}${s.since.by ? ", reset by " + s.since.by : ""}`;
  $("shift-reset").hidden = !engineer();
}

function showRecorder(r) {
  if (!r) return;
  $("recorder").textContent = `recorded ${r.records} · maps ${r.images} · lost on the wire ${r.lost}` +
    ` · dropped ${r.dropped_records} records, ${r.dropped_images} maps · ${(r.bytes / 2 ** 20).toFixed(1)} MiB`;
}

function render() {
  lastDraw = performance.now();
  for (const [name, c] of Object.entries(model.cameras)) drawCamera(name, c);
  drawBanner();
  drawShift();
  showRecorder(model.recorder);
}

function apply([event, data]) {
  // true when what the page draws changed (a map only fetches a new picture; a stored part joins the gallery)
  if (event === "decision") { onDecision(data); if (hasFrames(data.camera)) refreshImage(data.camera); return true; }
  if (event === "map") { refreshImage(data.camera); return false; }
  if (event === "health") { onHealth(data); return true; }
  if (event === "tick") {
    data.health.forEach(onHealth); model.box = data.box; model.recorder = data.recorder; model.shift = data.shift;
    return true;
  }
  if (event === "shift") { model.shift = data; return true; }
  if (event === "recorded") {
    if (recordedDuringLoad) recordedDuringLoad.push(data); else if (galleryLoaded) addThumb(data);
    return false;
  }
  if (event === "review" || event === "mark") {
    document.querySelector(`.thumb[data-id="${data.id}"]`)?.classList.add(event === "review" ? "reviewed" : "marked");
  }
  return false;
}

function connect() {
  const source = new EventSource("/events");
  // (re)connected: load the state again, so that nothing that happened before or in between is missed
  source.onopen = () => { model.link = true; model.lastMessage = performance.now(); resync(); };
  source.onerror = () => { model.link = false; schedule(); };
  source.addEventListener("batch", (e) => {
    model.link = true; model.lastMessage = performance.now();
    if (JSON.parse(e.data).map(apply).some(Boolean)) schedule();
  });
  // the view ticks every second: silence means the connection is gone even if the socket says nothing
  setInterval(() => {
    if (model.link && performance.now() - model.lastMessage > RED_AFTER_S * 1000) { model.link = false; source.close(); connect(); }
    schedule();
  }, 500);
}

// ---------------------------------------------------------------------------------------- parts
function placeholder(text) { return el("div", { class: "noimage small" }, text); }

function thumb(row) {
  const button = el("button", { class: `thumb${row.review ? " reviewed" : ""}${row.marked_ns ? " marked" : ""}`,
                                "data-id": row.id ?? "", "data-testid": "thumb", onclick: () => openDetail(row.id) });
  // the part itself where its frame is known (with the region outlined), else the map; a fault without
  // either shows its reason, never a broken picture
  const live = row.image === undefined;  // pushed as it happened: its map may still be on its way
  const pictured = live ? row.verdict === "reject" || hasFrames(row.camera) : row.image || (hasFrames(row.camera) && row.frame_sha256);
  let picture;
  if (pictured) {
    picture = el("img", { alt: `${row.camera} frame ${row.frame_id}`, loading: "lazy" });
    let tries = 0;
    picture.onload = () => { picture.style.visibility = "visible"; };
    picture.onerror = () => {
      picture.style.visibility = "hidden";
      if (live && ++tries <= 3) setTimeout(() => { picture.src = `/api/records/${row.id}/thumb.png?try=${tries}`; }, 700 * tries);
      else picture.replaceWith(placeholder(row.reason || "no map, no frame"));
    };
    picture.src = `/api/records/${row.id}/thumb.png`;
  } else picture = placeholder(row.reason || "no map, no frame");
  button.append(picture, el("div", {}, el("span", { class: `tag ${row.verdict}` }, row.verdict), ` ${row.camera} #${row.frame_id}`),
                el("div", { class: "muted" }, `${fmt(row.score, 3)} · ${when(row.wall_ns)}`));
  return button;
}

function galleryParams() {
  const params = new URLSearchParams({ limit: "200" });
  if ($("f-rejects").checked) params.append("verdict", "reject");
  if ($("f-faults").checked) params.append("verdict", "fault");
  if ($("f-since").value) params.set("since", $("f-since").value);
  if ($("f-reason").value.trim()) params.set("reason", $("f-reason").value.trim());
  if ($("f-marked").checked) params.set("marked", "1");
  return params;
}

function addThumb(d) {
  if (d.verdict === "fault" && !$("f-faults").checked) return;
  if (d.verdict === "reject" && !$("f-rejects").checked) return;
  if ($("f-marked").checked) return;
  const reason = $("f-reason").value.trim();
  if (reason && !d.reason.includes(reason)) return;
  $("gallery").prepend(thumb(d));
  while ($("gallery").children.length > 1000) $("gallery").lastChild.remove();
}

async function loadGallery(more = false) {
  const params = galleryParams();
  if (!params.getAll("verdict").length) { $("gallery").replaceChildren(); return; }
  if (more && oldest !== null) params.set("before", oldest);
  if (!more) recordedDuringLoad = [];
  let rows;
  try { rows = await api(`/api/records?${params}`); } catch (error) { recordedDuringLoad = null; throw error; }
  if (more) $("gallery").append(...rows.map(thumb));
  else {
    $("gallery").replaceChildren(...rows.map(thumb));
    const fetched = new Set(rows.map((row) => row.id));
    const missed = recordedDuringLoad.filter((row) => !fetched.has(row.id));
    recordedDuringLoad = null;
    missed.forEach(addThumb);
  }
  if (rows.length) oldest = rows[rows.length - 1].id;
  $("older").hidden = rows.length < 200;
  galleryLoaded = true;
  const exportParams = galleryParams(); exportParams.delete("limit");
  $("export").href = `/api/export.csv?${exportParams}`;
  $("export").hidden = !engineer();
}

async function find(e) {
  e.preventDefault();
  $("find-message").textContent = ""; $("matches").hidden = true;
  const params = new URLSearchParams({ limit: "50" });
  const frame = $("find-frame").value, part = $("find-part").value.trim(), session = $("find-session").value.trim();
  if (frame.trim() !== "" && !/^\s*\d+\s*$/.test(frame)) { $("find-message").textContent = `"${frame}" is not a frame id (a whole number)`; return; }
  if (frame.trim() !== "") params.set("frame", frame.trim());
  if (part) params.set("part", part);
  if (session) params.set("session", session);
  if ($("find-camera").value) params.set("camera", $("find-camera").value);
  if ($("find-at").value) {  // around a time: the ten minutes either side
    const at = new Date($("find-at").value).getTime();
    const iso = (ms) => new Date(ms).toISOString().replace("Z", "+00:00");  // a zone every Python reads
    params.set("since", iso(at - 600e3)); params.set("until", iso(at + 600e3));
  }
  if ([...params.keys()].length === 1) { $("find-message").textContent = "give a frame id, a part id, a session or a time"; return; }
  let rows;
  try { rows = await api(`/api/records?${params}`); } catch (error) { $("find-message").textContent = error.message; return; }
  if (!rows.length) { $("find-message").textContent = "no recorded part matches"; return; }
  if (rows.length === 1) { openDetail(rows[0].id); return; }
  // ambiguous: the same frame id on several cameras or sessions; the person chooses
  $("matches").replaceChildren(el("p", {}, `${rows.length}${rows.length === 50 ? "+" : ""} parts match — choose one:`),
    ...rows.map((r) => el("button", { class: "match", "data-testid": "match", onclick: () => openDetail(r.id) },
      el("span", { class: `tag ${r.verdict}` }, r.verdict), ` ${r.camera} · frame ${r.frame_id}`,
      r.part_id ? ` · part ${r.part_id}` : "", ` · ${when(r.wall_ns)} · session ${r.session}`)));
  $("matches").hidden = false;
}

function zoom(src) { $("zoom-img").src = src; $("zoom").showModal(); }

function detailPictures(row) {
  const overlay = $("d-overlay").checked ? 1 : 0;
  $("d-frame").hidden = !row.has_frame;
  if (row.has_frame) $("d-frame").src = `/api/records/${row.id}/frame.png?overlay=${overlay}`;
  $("d-map").hidden = !row.image;
  if (row.image) $("d-map").src = `/api/records/${row.id}/map.png`;
  const why = [];
  if (!row.image) why.push(row.verdict === "fault" ? "no map: the fault came before scoring" : "no map kept for this part");
  if (!row.has_frame) why.push(row.no_frame_because);
  $("d-noimage").hidden = row.has_frame && !!row.image;
  $("d-noimage").textContent = why.join(" · ");
}

async function openDetail(id, attempt = 0) {
  const row = await api(`/api/records/${id}`);
  if (attempt && current?.id !== id) return;
  current = row;
  // a reject's map is stored just after its decision: look again shortly if it is not there yet
  if (!row.image && row.verdict === "reject" && attempt < 5) setTimeout(() => openDetail(id, attempt + 1), 800);
  $("d-title").textContent = `${row.camera} · frame ${row.frame_id} · ${row.verdict.toUpperCase()}`;
  $("d-reason").textContent = row.reason;
  $("d-reason").className = `reason ${row.verdict}`;
  detailPictures(row);
  const fields = [["time", when(row.wall_ns)], ["part id (PLC)", row.part_id ?? "–"], ["score", fmt(row.score, 6)],
    ["threshold", fmt(row.threshold, 6)], ["largest region", `${row.region_px} px`], ["latency", `${fmt(row.latency_ms, 3)} ms`],
    ["thresholds version", row.thresholds_version], ["model", row.model_hash.slice(0, 16)],
    ["session / seq", `${row.session} / ${row.seq}`], ["frame SHA-256", row.frame_sha256 ? row.frame_sha256.slice(0, 16) + "…" : "–"],
    ["record", `#${row.id}`]];
  $("d-fields").replaceChildren(...fields.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, String(v)))));
  showReview(row);
  $("d-error").textContent = "";
  if (!$("detail").open) $("detail").showModal();
}

function showReview(row) {
  const by = row.review ? `Reviewed: ${row.review.replace("_", " ")}${row.review_label ? " (" + row.review_label + ")" : ""} by ${row.reviewer}, ${when(row.reviewed_ns)}.` : "Not reviewed.";
  const marked = row.marked_ns ? ` Marked by ${row.marked_by}${row.mark_note ? ": " + row.mark_note : ""}.` : "";
  const who = !state.user ? " Sign in (top right) to mark or review." : engineer() ? "" : " Reviews are an engineer's task; mark the part for a look.";
  $("d-reviewed").textContent = by + marked + who;
  const rejected = row.verdict !== "ok";
  for (const id of ["r-good", "r-defect", "r-label"]) $(id).hidden = !engineer() || !rejected;
  $("r-missed").hidden = !engineer() || rejected;
  $("r-mark").hidden = !state.user; $("m-note").hidden = !state.user;
  $("d-history").replaceChildren(...row.history.map((h) => el("li", {},
    `${when(h.wall_ns)} ${h.who} (${h.role}): ${h.action === "mark" ? "marked" + (h.note ? " — " + h.note : "") :
      `${h.old ?? "not reviewed"} → ${h.new}${h.label ? ":" + h.label : ""}`}`)));
}

async function act(path, body) {
  try {
    const row = await api(`/api/records/${current.id}/${path}`, body);
    current = { ...current, ...row }; showReview(current); $("d-error").textContent = "";
  } catch (error) { $("d-error").textContent = error.message; }
}

// ---------------------------------------------------------------------------------------- trends
function hourLabel(ns) { return new Date(ns / 1e6).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }); }

function drawScores(canvas, hours) {
  // each hour a column: how many scores fell in each 1/8 of the threshold (darker: more); the line at 1 is the threshold
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, left = 40, bottom = 18;
  ctx.clearRect(0, 0, W, H);
  if (!hours.length) { ctx.fillText("no scores in the last 24 h", left, 20); return; }
  const bins = hours[0].scores.length, cw = (W - left) / Math.max(hours.length, 24), bh = (H - bottom) / bins;
  hours.forEach((h, i) => {
    const total = h.scores.reduce((a, b) => a + b, 0) || 1;
    h.scores.forEach((count, b) => {
      if (!count) return;
      const share = Math.min(1, 3 * count / total);
      ctx.fillStyle = b >= 8 ? `rgba(198,40,40,${0.15 + 0.85 * share})` : `rgba(27,135,63,${0.15 + 0.85 * share})`;
      ctx.fillRect(left + i * cw + 1, H - bottom - (b + 1) * bh, cw - 2, bh);
    });
    if (i % Math.ceil(hours.length / 12) === 0) { ctx.fillStyle = "#333"; ctx.fillText(hourLabel(h.hour_ns), left + i * cw, H - 4); }
  });
  const yT = H - bottom - 8 * bh;
  ctx.strokeStyle = "#111"; ctx.setLineDash([6, 4]); ctx.beginPath(); ctx.moveTo(left, yT); ctx.lineTo(W, yT); ctx.stroke(); ctx.setLineDash([]);
  ctx.fillStyle = "#111"; ctx.font = "12px sans-serif";
  ctx.fillText("threshold", 0, yT + 4); ctx.fillText("0", 28, H - bottom); ctx.fillText("≥2×", 10, H - bottom - bins * bh + 12);
}

function drawRates(canvas, hours) {
  // each hour two bars: the share of its parts rejected, and faulted
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, left = 40, bottom = 18;
  ctx.clearRect(0, 0, W, H);
  if (!hours.length) return;
  const rate = (h, k) => { const n = h.ok + h.reject + h.fault; return n ? h[k] / n : 0; };
  const top = Math.max(0.05, ...hours.map((h) => Math.max(rate(h, "reject"), rate(h, "fault"))));
  const cw = (W - left) / Math.max(hours.length, 24), height = (v) => (v / top) * (H - bottom - 22);
  hours.forEach((h, i) => {
    const x = left + i * cw;
    ctx.fillStyle = "#c62828"; ctx.fillRect(x + 2, H - bottom - height(rate(h, "reject")), cw / 2 - 3, height(rate(h, "reject")));
    ctx.fillStyle = "#b26a00"; ctx.fillRect(x + cw / 2, H - bottom - height(rate(h, "fault")), cw / 2 - 3, height(rate(h, "fault")));
    if (i % Math.ceil(hours.length / 12) === 0) { ctx.fillStyle = "#333"; ctx.fillText(hourLabel(h.hour_ns), x, H - 4); }
  });
  ctx.fillStyle = "#111"; ctx.font = "12px sans-serif";
  ctx.fillText(`${(100 * top).toFixed(0)} %`, 0, 24); ctx.fillText("0", 28, H - bottom);
  ctx.fillStyle = "#c62828"; ctx.fillText("reject rate", left + 8, 12); ctx.fillStyle = "#b26a00"; ctx.fillText("fault rate", left + 90, 12);
}

function drawDrift(canvas, drift, since) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, left = 40;
  ctx.clearRect(0, 0, W, H);
  const colours = { unknown: "#bbb", stable: "#1b873f", drifting: "#e0a000", drifted: "#c62828" };
  const cams = [...new Set(drift.map((d) => d.camera))], now = Date.now() * 1e6, span = now - since;
  const rowH = Math.max(10, (H - 4) / Math.max(cams.length, 1));
  ctx.font = "11px sans-serif";
  cams.forEach((name, r) => {
    const changes = drift.filter((d) => d.camera === name);
    changes.forEach((d, i) => {
      const x0 = left + ((d.wall_ns - since) / span) * (W - left), next = changes[i + 1]?.wall_ns ?? now;
      ctx.fillStyle = colours[d.state] || "#bbb";
      ctx.fillRect(Math.max(left, x0), r * rowH + 2, Math.max(1, ((next - d.wall_ns) / span) * (W - left)), rowH - 3);
    });
    ctx.fillStyle = "#111"; ctx.fillText(name, 0, r * rowH + rowH - 4);
  });
  if (!cams.length) { ctx.fillStyle = "#555"; ctx.fillText("no drift state recorded in the last 24 h", left, 20); }
}

async function loadTrends() {
  const since = (Date.now() - 24 * 3600e3) * 1e6;
  const t = await api("/api/trends?hours=24");
  drawScores($("c-scores"), t.hours);
  drawRates($("c-rates"), t.hours);
  drawDrift($("c-drift"), t.drift, since);
  $("hours").tBodies[0].replaceChildren(...t.hours.map((h) => el("tr", {},
    el("td", {}, new Date(h.hour_ns / 1e6).toLocaleString([], { dateStyle: "short", timeStyle: "short" })),
    ...["ok", "reject", "fault", "false_reject", "defect_confirmed", "missed_defect"].map((k) => el("td", {}, String(h[k]))))));
  $("frr").textContent = t.false_reject_share === null ?
    `${t.rejected} rejected or faulted in 24 h; none reviewed yet.` :
    `${t.rejected} rejected or faulted in 24 h; of ${t.false_rejects + t.confirmed} reviewed, ${(100 * t.false_reject_share).toFixed(1)} % were good parts (false rejects).`;
  $("charts").replaceChildren(...Object.entries(model.cameras).map(([name, c]) => {
    const canvas = el("canvas", { width: 1200, height: 160 });
    drawStrip(canvas, c.scores);
    return el("div", {}, el("h2", {}, `${name}: score of the last ${c.scores.length} parts`), canvas);
  }));
}

// ------------------------------------------------------------------------------------------ wiring
function showUser() {
  $("login").hidden = !!state.user; $("signed-in").hidden = !state.user;
  $("user").textContent = state.user || "";
  $("role").textContent = state.role || "";
  $("login-password").hidden = !(state.password || state.engineer_password);
  $("login-password").required = state.password;
  $("shift-reset").hidden = !engineer();
  $("export").hidden = !engineer();
}

async function start() {
  try {
    state = await api("/api/state");
  } catch (error) {
    state.user = null; state.password = true;  // nothing is served before signing in: a password is set
    showUser();
    $("banner-title").textContent = "SIGN IN"; $("banner-text").textContent = error.message;
    return;
  }
  showUser();
  legends();
  applyState(state);
  connect();
}

function applyState(s) {
  for (const [name, c] of Object.entries(s.cameras)) {
    const cam = camera(name);
    cam.scores = c.scores.map((x) => [...x]);
    if (c.last) { cam.last = c.last; cam.receivedAt = performance.now() - 1000 * (c.health.last_age_s ?? 0); }
    cam.health = c.health; cam.dirty = true;
    if (c.last) refreshImage(name);
  }
  model.box = s.box; model.shift = s.shift; model.recorder = s.recorder;
  render();
}

async function resync() {
  try { applyState(await api("/api/state")); } catch (error) { model.link = false; schedule(); }
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const r = await api("/api/login", { name: $("login-name").value, password: $("login-password").value });
    const first = !state.cameras;
    state.user = r.user; state.role = r.role; showUser(); schedule();
    if (first) start();
  } catch (error) { $("banner-text").textContent = `sign-in: ${error.message}`; alert(error.message); }
});
$("logout").addEventListener("click", async () => { await api("/api/logout", {}); state.user = null; state.role = null; showUser(); });
$("shift-reset").addEventListener("click", async () => {
  if (!confirm("Reset the shift counters? The reset is recorded with your name.")) return;
  try { model.shift = await api("/api/counters/reset", {}); schedule(); } catch (error) { alert(error.message); }
});
$("filter").addEventListener("submit", (e) => { e.preventDefault(); oldest = null; loadGallery(); });
$("older").addEventListener("click", () => loadGallery(true));
$("find").addEventListener("submit", find);
$("overlay").addEventListener("change", () => Object.keys(model.cameras).forEach(refreshImage));
$("d-overlay").addEventListener("change", () => current && detailPictures(current));
for (const id of ["d-frame", "d-map"]) $(id).addEventListener("click", () => zoom($(id).src));
document.addEventListener("click", (e) => { if (e.target.matches?.("img.zoomable") && e.target.src) zoom(e.target.src); });
for (const b of document.querySelectorAll("#d-review button[data-review]")) b.addEventListener("click", () =>
  act("review", { review: b.dataset.review, label: $("r-label").value.trim() || null }));
$("r-mark").addEventListener("click", () => act("mark", { note: $("m-note").value.trim() || null }));
document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("nav button").forEach((o) => o.classList.toggle("active", o === b));
  document.querySelectorAll("main > section").forEach((s) => { s.hidden = s.id !== `tab-${b.dataset.tab}`; });
  clearInterval(trendsTimer);
  if (b.dataset.tab === "parts") { oldest = null; loadGallery(); }
  if (b.dataset.tab === "trends") { loadTrends(); trendsTimer = setInterval(loadTrends, TRENDS_EVERY_MS); }
}));
start();
