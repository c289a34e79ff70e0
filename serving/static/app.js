// The ssl-zoo page: search the server's collection with an image, see its map, compare two images.
// Plain JavaScript, no build step and nothing fetched from outside: it talks only to the server that sent it.
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const state = { info: null, query: null, map: null, colours: {} };

function headers() {
  const key = $("key").value || sessionStorage.getItem("ssl-zoo-key") || "";
  return key ? { Authorization: "Bearer " + key } : {};
}

async function call(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { const body = await response.json(); message = body.error.message || body.error || message; } catch (e) { /* not JSON */ }
    if (response.status === 401) message += " (enter the server's API key above)";
    throw new Error(message);
  }
  return response;
}

function status(text) { $("status").textContent = text || ""; }

async function thumbnail(row) {
  const blob = await (await call("/collection?row=" + row)).blob();
  return URL.createObjectURL(blob);
}

function form(files) {
  const data = new FormData();
  for (const file of files) data.append("images", file);
  return data;
}

async function search(file) {
  state.query = file;
  $("query").src = URL.createObjectURL(file);
  $("query").hidden = false;
  $("neighbors").replaceChildren();
  $("match").hidden = true;
  $("prediction").textContent = "";
  status("searching...");
  try {
    const answer = await (await call("/search?k=8", { method: "POST", body: form([file]) })).json();
    const result = answer.results[0];
    if (result.label !== undefined) $("prediction").textContent = "k-NN class: " + (result.label ?? "none");
    $("neighbors").dataset.rows = result.neighbors.map((n) => n.row).join(",");
    for (const hit of result.neighbors) {
      const item = document.createElement("li");
      item.dataset.row = hit.row;
      const image = document.createElement("img");
      image.alt = hit.path;
      image.title = hit.path;
      item.append(image, (hit.label ?? "") + " " + hit.similarity.toFixed(3));
      item.addEventListener("click", () => match(item, hit));
      $("neighbors").append(item);
      thumbnail(hit.row).then((url) => { image.src = url; }).catch((e) => status(e.message));
    }
    $("neighbors").dataset.done = "true";
    status("");
  } catch (e) {
    status(e.message);
  }
}

async function match(item, hit) {
  for (const other of $("neighbors").children) other.classList.toggle("selected", other === item);
  status("matching...");
  try {
    const grids = await (await call("/match?row=" + hit.row, { method: "POST", body: form([state.query]) })).json();
    await drawHeatmap($("match-query"), URL.createObjectURL(state.query), grids.query);
    await drawHeatmap($("match-other"), await thumbnail(hit.row), grids.other);
    $("match-caption").textContent = "query (left) and row " + hit.row + " (" + (hit.label ?? "") + ", right): cosine similarity " + grids.similarity.toFixed(3);
    $("match").hidden = false;
    $("match").dataset.row = hit.row;
    status("");
  } catch (e) {
    status(e.message);
  }
}

function heat(value) {  // cosine similarity in [0, 1] -> a colour from blue (low) to red (high)
  const t = Math.max(0, Math.min(1, value));
  return "rgba(" + Math.round(255 * t) + "," + Math.round(80 * (1 - Math.abs(2 * t - 1))) + "," + Math.round(255 * (1 - t)) + ",0.45)";
}

async function drawHeatmap(canvas, url, grid) {
  const image = new Image();
  image.src = url;
  await image.decode();
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  const rows = grid.length, cols = grid[0].length;
  const h = canvas.height / rows, w = canvas.width / cols;
  context.font = "13px system-ui";
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      context.fillStyle = heat(grid[i][j]);
      context.fillRect(j * w, i * h, w, h);
      context.fillStyle = "white";
      context.fillText(grid[i][j].toFixed(2), j * w + 4, i * h + 16);
    }
  }
}

async function showMap() {
  if (state.map) return;
  status("computing the map (once per server process; seconds)...");
  try {
    state.map = (await (await call("/map")).json()).points;
  } catch (e) {
    status(e.message);
    return;
  }
  const labels = [...new Set(state.map.map((p) => p.label ?? "no label"))].sort();
  labels.forEach((label, i) => { state.colours[label] = PALETTE[i % PALETTE.length]; });
  const canvas = $("map"), context = canvas.getContext("2d"), pad = 8;
  context.clearRect(0, 0, canvas.width, canvas.height);
  for (const point of state.map) {
    point.px = pad + point.x * (canvas.width - 2 * pad);
    point.py = pad + (1 - point.y) * (canvas.height - 2 * pad);
    context.fillStyle = state.colours[point.label ?? "no label"];
    context.beginPath();
    context.arc(point.px, point.py, 2.5, 0, 2 * Math.PI);
    context.fill();
  }
  canvas.dataset.points = state.map.length;
  $("legend").replaceChildren(...labels.map((label) => {
    const item = document.createElement("li");
    const dot = document.createElement("span");
    dot.style.background = state.colours[label];
    item.append(dot, label);
    return item;
  }));
  status("");
}

async function hoverMap(event) {
  if (!state.map) return;
  const canvas = $("map"), box = canvas.getBoundingClientRect();
  const x = (event.clientX - box.left) * canvas.width / box.width, y = (event.clientY - box.top) * canvas.height / box.height;
  let best = null, bestDistance = 100;
  for (const point of state.map) {
    const d = (point.px - x) ** 2 + (point.py - y) ** 2;
    if (d < bestDistance) { best = point; bestDistance = d; }
  }
  if (!best) { $("map-tip").hidden = true; return; }
  $("map-tip").style.left = (best.px + 10) + "px";
  $("map-tip").style.top = (best.py + 10) + "px";
  $("map-tip-text").textContent = "row " + best.row + (best.label ? ", " + best.label : "");
  $("map-tip").hidden = false;
  if ($("map-tip").dataset.row !== String(best.row)) {
    $("map-tip").dataset.row = best.row;
    $("map-tip-image").src = await thumbnail(best.row);
  }
}

async function compare() {
  const a = $("compare-a").files[0], b = $("compare-b").files[0];
  if (!a || !b) return;
  status("comparing...");
  try {
    const grids = await (await call("/match", { method: "POST", body: form([a, b]) })).json();
    await drawHeatmap($("compare-query"), URL.createObjectURL(a), grids.query);
    await drawHeatmap($("compare-other"), URL.createObjectURL(b), grids.other);
    $("compare-caption").textContent = "cosine similarity of the two embeddings: " + grids.similarity.toFixed(3) + " (" + grids.model + ")";
    status("");
  } catch (e) {
    status(e.message);
  }
}

function show(view) {
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== "view-" + view;
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  if (view === "map") showMap();
}

async function start() {
  $("key").value = sessionStorage.getItem("ssl-zoo-key") || "";
  $("key").addEventListener("change", () => { sessionStorage.setItem("ssl-zoo-key", $("key").value); start(); });
  try {
    state.info = await (await call("/info")).json();
  } catch (e) {
    status(e.message);
    return;
  }
  const model = state.info.model, index = model.index;
  $("model").textContent = model.model + (index ? " · " + index.rows + " images indexed" : " · no index: compare two images");
  $("tab-search").hidden = $("tab-map").hidden = !index;
  show(index ? "search" : "compare");
  status("");
}

for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
$("query-file").addEventListener("change", () => { if ($("query-file").files[0]) search($("query-file").files[0]); });
$("drop").addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  if (event.dataTransfer.files[0]) search(event.dataTransfer.files[0]);
});
$("map").addEventListener("mousemove", hoverMap);
$("compare-a").addEventListener("change", compare);
$("compare-b").addEventListener("change", compare);
start();
