// The studio page: a face, a slider per attribute, the edit as you drag. Everything shown from the server
// (names, messages, numbers) goes into the page as text nodes, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  catalog: null,      // GET /api/catalog for the chosen model and space
  source: null,       // {seed: n} or {photo: sha256}
  original: null,     // the unedited face: image and scores
  values: {},         // attribute -> slider distance
  hold: new Set(),    // attributes held while others move
  holdAuto: false,    // the editor picks what to hold, per move
  units: false,       // sliders in the attributes' units (target edits) instead of distance
  active: null,       // the slider moved last
  edits: 0,           // edits shown so far (tests and the benchmark wait on it)
};
const DEBOUNCE_MS = 25;
const UNITS = { years: " y", degrees: "°", probability: "", ratio: "" };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function setStatus(message, kind = "idle") {
  $("status").textContent = message;
  $("status").dataset.state = kind;
}

async function api(path, body, raw) {
  const options = { credentials: "same-origin", headers: {} };
  if (raw) {
    options.method = "POST";
    options.body = raw;
    options.headers["Content-Type"] = raw.type || "application/octet-stream";
  } else if (body !== undefined) {
    options.method = "POST";
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, options);
  let reply;
  try {
    reply = await response.json();
  } catch (e) {
    throw new Error(`${response.status} ${response.statusText}`);
  }
  if (!response.ok) throw new Error(reply.error || `${response.status} ${response.statusText}`);
  return reply;
}

function fmt(value, unit) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  const suffix = UNITS[unit] !== undefined ? UNITS[unit] : unit ? ` ${unit}` : "";
  return `${Number(value).toFixed(Math.abs(value) >= 10 ? 1 : 2)}${suffix}`;
}

function unitOf(attribute) {
  const found = (state.catalog.attributes || []).find((a) => a.name === attribute);
  return found ? found.unit : "";
}

// -- catalog: models, spaces, sliders --------------------------------------------------------------------

async function loadCatalog(fresh) {
  const query = new URLSearchParams({ model: $("model").value || "", space: $("space").value || "" });
  if (fresh) query.set("fresh", "1");
  const catalog = await api(`/api/catalog?${query}`);
  state.catalog = catalog;
  fill($("model"), catalog.models.map((m) => [m.name, `${m.name} (${m.resolution} px)`]), catalog.model);
  fill($("space"), Object.keys(catalog.spaces).map((s) => [s, s]), catalog.space);
  $("layers-box").hidden = !catalog.layers;
  $("layer-start").max = Math.max(catalog.layers - 1, 0);
  $("layer-end").max = catalog.layers;
  const model = catalog.models.find((m) => m.name === catalog.model);
  $("photo").disabled = !(model && model.invertible);
  $("photo").title = $("photo").disabled ? "this model cannot invert photos" : "";
  renderSliders(catalog);
  fill($("grid-attribute"), catalog.sliders.map((s) => [s.attribute, s.attribute]), $("grid-attribute").value);
  $("grid-steps").max = catalog.limits.max_grid_steps;
  return catalog;
}

function fill(select, options, chosen) {
  select.replaceChildren(...options.map(([value, label]) => el("option", { value, text: label })));
  if (options.some(([value]) => value === chosen)) select.value = chosen;
}

function renderSliders(catalog) {
  const known = new Set(catalog.sliders.map((s) => s.attribute));
  for (const name of Object.keys(state.values)) if (!known.has(name)) delete state.values[name];
  for (const name of [...state.hold]) if (!known.has(name)) state.hold.delete(name);
  const rows = catalog.sliders.map((spec) => {
    const value = state.values[spec.attribute] || 0;
    state.values[spec.attribute] = value;
    const range = state.units && spec.unit_range ? spec.unit_range : spec;
    const unit = state.units && spec.unit_range ? spec.score_unit : "";
    const input = el("input", { type: "range", min: range.min, max: range.max, step: range.step, value,
                                "aria-label": spec.attribute, "data-attribute": spec.attribute });
    const shown = el("output", { text: fmt(value, unit) });
    const hold = el("input", { type: "checkbox", checked: state.hold.has(spec.attribute),
                               "data-hold": spec.attribute });
    input.addEventListener("input", () => {
      state.values[spec.attribute] = Number(input.value);
      shown.textContent = fmt(Number(input.value), unit);
      schedule(spec.attribute);
    });
    hold.addEventListener("change", () => {
      if (hold.checked) state.hold.add(spec.attribute); else state.hold.delete(spec.attribute);
      if (state.active && state.active !== spec.attribute) schedule(state.active);
    });
    const b = spec.boundary;
    const facts = [
      ["version", `${b.ref.version} (${b.origin || "?"})`],
      ["validation accuracy", b.validation_accuracy !== undefined ? Number(b.validation_accuracy).toFixed(3) : "–"],
      ["samples", `${b.num_samples || 0} (${b.num_valid || 0} scored)`],
      ["space", spec.space || b.ref.space],
      ["created", b.created_unix ? new Date(b.created_unix * 1000).toISOString().slice(0, 16).replace("T", " ") : "–"],
      ["solver", b.solver || "–"],
      ["model version", b.model_version || "–"],
    ];
    const link = `/api/boundary?${new URLSearchParams({ model: catalog.model, space: catalog.space,
                                                         attribute: spec.attribute })}`;
    const about = el("details", {}, el("summary", { text: "boundary" }),
      el("dl", {}, ...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })])),
      el("a", { href: link, target: "_blank", rel: "noopener", text: "all metadata (JSON)" }));
    const scored = spec.scored ? `scored in ${spec.score_unit || "its unit"}` : "not scored";
    const reads = unit ? `change in ${unit} (the editor finds the distance)` : `distance along the normal; ${scored}`;
    return el("div", { className: "slider", title: spec.description || "" },
      el("div", { className: "row" }, el("span", { className: "name", text: spec.attribute }), input, shown,
         el("label", {}, hold, " hold")),
      el("span", { className: "hint", text: reads }), about);
  });
  $("sliders").replaceChildren(...rows);
  $("no-sliders").hidden = catalog.sliders.length > 0;
}

// -- the face: seeds and photos --------------------------------------------------------------------------

function chosen() {
  return { model: state.catalog.model, space: state.catalog.space };
}

async function loadSeed(seed) {
  setStatus("rendering…", "busy");
  const reply = await api("/api/source", { ...chosen(), seed });
  $("seed").value = reply.seed;
  $("photo-box").hidden = true;
  useSource({ seed: reply.seed }, reply, `seed ${reply.seed}`);
}

async function loadPhoto(file) {
  const limits = state.catalog.limits;
  if (file.size > limits.max_upload_bytes) {
    setStatus(`The photo is ${(file.size / 1e6).toFixed(1)} MB; the studio accepts photos up to ` +
              `${limits.max_upload_bytes / 1e6} MB.`, "error");
    return;
  }
  const face = Number($("face-index").value) || 0;
  setStatus(`finding, inverting and tuning face ${face}… (once per photo and face)`, "busy");
  const query = new URLSearchParams({ ...chosen(), face });
  const reply = await api(`/api/photo?${query}`, undefined, file);
  state.file = file;
  $("photo-preview").src = URL.createObjectURL(file);
  $("photo-box").hidden = false;
  const name = file.name.replace(/\.[^.]*$/, "");
  useSource({ photo: reply.photo }, reply, face ? `${name} face ${face}` : name);
}

function useSource(source, reply, name) {
  state.source = source;
  state.original = reply;
  state.name = name;
  for (const key of Object.keys(state.values)) state.values[key] = 0;
  for (const input of document.querySelectorAll("#sliders input[type=range]")) {
    input.value = 0;
    input.parentElement.querySelector("output").textContent = fmt(0);
  }
  state.active = null;
  $("original").src = reply.image;
  show(reply, null);
  const warnings = reply.warnings || [];
  setStatus(warnings.length ? warnings.join("; ") : `${name} ready`, "idle");
}

// -- edits -----------------------------------------------------------------------------------------------

let timer = null;
let pending = null;
let inflight = false;

function schedule(attribute) {
  state.active = attribute;
  clearTimeout(timer);
  timer = setTimeout(() => {
    timer = null;
    pending = attribute;
    if (!inflight) pump();
  }, DEBOUNCE_MS);
}

function request(extra) {
  return { ...chosen(), source: state.source, values: state.values, hold: [...state.hold],
           hold_auto: state.holdAuto, units: state.units,
           layer_start: Number($("layer-start").value) || 0, layer_end: Number($("layer-end").value) || 0, ...extra };
}

// One edit in flight at a time; while it runs only the newest slider position waits (the rest are skipped).
async function pump() {
  inflight = true;
  while (pending !== null) {
    const active = pending;
    pending = null;
    if (!state.source) break;
    setStatus(`editing ${active}…`, "busy");
    const started = performance.now();
    try {
      const reply = await api("/api/edit", request({ active }));
      reply.round_trip_ms = performance.now() - started;
      show(reply, active);
      if (pending === null) setStatus(`${active} ${fmt(state.values[active])} (${reply.round_trip_ms.toFixed(0)} ms)`);
    } catch (error) {
      setStatus(error.message, "error");
    }
  }
  inflight = false;
}

function show(reply, active) {
  $("face").src = reply.image;
  const moved = Object.entries(state.values).filter(([, v]) => v !== 0)
    .map(([k, v]) => `${k}${v > 0 ? "+" : ""}${v.toFixed(2)}`);
  $("download").href = reply.image;
  $("download").download = `${[state.name || "face", ...moved].join("_").replace(/[^\w.+-]+/g, "-")}.png`;
  $("caption").textContent = moved.length ? moved.join(", ") : "unedited";
  renderScores(reply.scores || []);
  renderFacts(reply, active);
  $("warnings").replaceChildren(...(reply.warnings || []).map((w) => el("li", { text: w })));
  state.edits += 1;
  document.body.dataset.edits = state.edits;
}

function renderScores(scores) {
  const before = new Map((state.original.scores || []).map((s) => [s.attribute, s]));
  $("scores").tBodies[0].replaceChildren(...scores.map((s) => {
    const unit = unitOf(s.attribute);
    const base = before.get(s.attribute);
    const change = s.valid && base && base.valid ? s.value - base.value : null;
    const cls = change === null || Math.abs(change) < 1e-9 ? "" : change > 0 ? "up" : "down";
    return el("tr", { "data-attribute": s.attribute },
      el("td", { text: s.attribute }),
      el("td", { text: base && base.valid ? fmt(base.value, unit) : "–" }),
      el("td", { className: "now", text: s.valid ? fmt(s.value, unit) : "no face", "data-value": s.valid ? s.value : "" }),
      el("td", { className: cls, text: change === null ? "" : `${change >= 0 ? "+" : ""}${fmt(change, unit)}` }));
  }));
}

function renderFacts(reply, active) {
  const facts = [];
  if (active) {
    facts.push(["boundary", reply.boundary], ["distance", reply.distance.toFixed(2)]);
    facts.push(["editor", `${reply.editor_ms} ms`], ["round trip", `${reply.round_trip_ms.toFixed(0)} ms`]);
  }
  const original = state.original;
  if (original && original.psnr) facts.push(["reconstruction", `${original.psnr.toFixed(1)} dB PSNR`]);
  if (original && original.inversion_seconds) facts.push(["inversion", `${original.inversion_seconds} s`]);
  // Fields the editor adds (an identity distance, a target's outcome, automatic holds, a receipt) are shown
  // as they come; those the page knows get a readable line, any other its JSON.
  const extras = { ...(reply.extras || {}) };
  const target = extras.target;
  if (target) {
    const u = target.unit || "";
    facts.push(["target", `${target.attribute} ${fmt(target.before, u)} → ${fmt(target.after, u)} (asked ` +
      `${fmt(target.goal, u)} ± ${fmt(target.tolerance, u)}: ${target.met ? "met" : "not met"}, ` +
      `${target.rounds || 0} rounds${target.message ? "; " + target.message : ""})`]);
  }
  for (const h of extras.holds || []) {
    const u = h.unit || "";
    facts.push([`auto hold ${h.attribute}`, h.held ? `held: drift ${fmt(h.drift || 0, u)} → ${fmt(h.held_drift || 0, u)}`
      : `not held: drift ${fmt(h.drift || 0, u)} (threshold ${fmt(h.threshold || 0, u)})`]);
  }
  if (extras.receipt) {
    const r = extras.receipt;
    const b = r.boundary || {};
    facts.push(["receipt", `${b.attribute || "?"} v${b.version || "?"}, distance ${fmt(r.distance || 0)}` +
      (r.held && r.held.length ? `, held ${r.held.join(", ")}` : "")]);
  }
  for (const known of ["target", "holds", "receipt"]) delete extras[known];
  if (extras.identity_distance !== undefined) {
    const d = Number(extras.identity_distance);
    facts.push(["identity distance", d < 0 ? "not measured" :
      `${d.toFixed(2)} (${d < 0.6 ? "the same person" : "another person"}: same below 0.6)`]);
  }
  for (const [key, value] of Object.entries(extras)) {
    if (key === "identity_distance") continue;
    facts.push([key.replace(/_/g, " "), typeof value === "object" ? JSON.stringify(value).slice(0, 200) : String(value)]);
  }
  $("facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
}

// -- grid ------------------------------------------------------------------------------------------------

async function showGrid() {
  const attribute = $("grid-attribute").value;
  if (!attribute || !state.source) return;
  setStatus(`grid of ${attribute}…`, "busy");
  try {
    const reply = await api("/api/grid", request({
      attribute, start: Number($("grid-start").value), end: Number($("grid-end").value),
      steps: Number($("grid-steps").value) }));
    const unit = unitOf(attribute);
    $("grid").replaceChildren(...reply.frames.map((frame) => {
      const score = (frame.scores || []).find((s) => s.attribute === attribute);
      const label = `${frame.distance >= 0 ? "+" : ""}${frame.distance.toFixed(2)}` +
        (score && score.valid ? ` · ${fmt(score.value, unit)}` : "");
      return el("figure", {}, el("img", { src: frame.image, alt: `${attribute} ${label}` }),
                el("figcaption", { text: label }));
    }));
    setStatus(`grid of ${attribute}: ${reply.frames.length} images`);
  } catch (error) {
    setStatus(error.message, "error");
  }
}

// -- wiring ----------------------------------------------------------------------------------------------

function guarded(fn) {
  return async (...args) => {
    try {
      await fn(...args);
    } catch (error) {
      setStatus(error.message, "error");
    }
  };
}

async function start() {
  await loadCatalog(false);
  await loadSeed(Number($("seed").value) || 0);
}

$("load-seed").addEventListener("click", guarded(() => loadSeed(Number($("seed").value) || 0)));
$("random-seed").addEventListener("click", guarded(() => loadSeed(null)));
$("face-index").addEventListener("change", guarded(async () => {
  if (state.file) await loadPhoto(state.file);
}));
$("photo").addEventListener("change", guarded(async () => {
  const file = $("photo").files[0];
  if (file) await loadPhoto(file);
}));
$("model").addEventListener("change", guarded(async () => {
  $("space").value = "";
  await loadCatalog(false);
  await loadSeed(Number($("seed").value) || 0);
}));
$("space").addEventListener("change", guarded(async () => {
  await loadCatalog(false);
  await loadSeed(Number($("seed").value) || 0);
}));
$("refresh").addEventListener("click", guarded(async () => {
  await loadCatalog(true);
  setStatus(`${state.catalog.sliders.length} attributes with a boundary`);
}));
$("reset").addEventListener("click", guarded(async () => {
  if (state.original) useSource(state.source, state.original, state.name);
}));
$("grid-show").addEventListener("click", guarded(showGrid));
$("hold-auto").addEventListener("change", () => {
  state.holdAuto = $("hold-auto").checked;
  if (state.active) schedule(state.active);
});
$("units").addEventListener("change", guarded(async () => {
  state.units = $("units").checked;
  for (const key of Object.keys(state.values)) state.values[key] = 0;  // distances and units do not convert
  renderSliders(state.catalog);
  if (state.original) useSource(state.source, state.original, state.name);
}));
document.addEventListener("DOMContentLoaded", guarded(start));
