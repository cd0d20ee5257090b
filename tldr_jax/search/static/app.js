// The search page of `tldr-jax serve`: plain JavaScript against the JSON API, nothing from the network.
"use strict";

const $ = (id) => document.getElementById(id);
const K = 12;
let info = null;
let current = null;  // the video shown in the player: {row, video}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function scoreText(hit) {
  let text = `score ${hit.score.toFixed(4)} · itc ${hit.itc.toFixed(4)}`;
  if (hit.itm !== undefined) text += ` · itm ${hit.itm.toFixed(3)}`;
  return text;
}

function showHits(hits) {
  const list = $("results");
  list.replaceChildren();
  if (hits.length === 0) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = "no videos found";
    list.append(empty);
  }
  for (const hit of hits) {
    const item = document.createElement("li");
    item.className = "hit";
    item.tabIndex = 0;
    item.dataset.row = hit.row;
    const img = document.createElement("img");
    img.src = `/api/thumbnails/${hit.row}.jpg`;
    img.alt = hit.video;
    img.loading = "lazy";
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = `${hit.rank}. ${hit.video}`;
    const scores = document.createElement("div");
    scores.className = "scores";
    scores.textContent = scoreText(hit);
    item.append(img, name, scores);
    item.addEventListener("click", () => play(hit.row));
    item.addEventListener("keydown", (e) => { if (e.key === "Enter") play(hit.row); });
    list.append(item);
  }
}

async function runSearch(event) {
  if (event) event.preventDefault();
  const q = $("q").value.trim();
  if (!q) { setStatus("type what you are looking for"); return; }
  const params = new URLSearchParams({ q, k: String(K) });
  if ($("rerank").checked) params.set("rerank", String(Math.max(info.rerank || 0, K)));
  else params.set("rerank", "0");
  setStatus("searching…");
  try {
    const result = await getJSON(`/api/search?${params}`);
    showHits(result.hits);
    const how = result.rerank ? `ITM re-ranking of the top ${result.rerank}` : "ITC";
    setStatus(`${result.hits.length} of ${result.videos} videos, ${how}, ${result.ms} ms`);
  } catch (err) {
    $("results").replaceChildren();  // no stale results under an error
    setStatus(err.message, true);
  }
}

async function play(row) {
  try {
    const video = await getJSON(`/api/videos/${row}`);
    current = video;
    $("player-panel").hidden = false;
    $("player-title").textContent = video.video;
    $("player-meta").textContent = `${video.frames} frames sampled · ${(video.size / 1024).toFixed(0)} KiB`
      + (video.playable ? "" : " · not a playable video file (a .npy clip)");
    const player = $("player");
    player.poster = video.thumbnail;
    if (video.playable) { player.src = video.media; player.play().catch(() => {}); }
    else { player.removeAttribute("src"); player.load(); }
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function moreLikeThis() {
  if (!current) return;
  setStatus(`videos like ${current.video}…`);
  try {
    const result = await getJSON(`/api/similar/${current.row}?k=${K}`);
    showHits(result.hits);
    setStatus(`${result.hits.length} videos most like ${current.video} (ITC cosine of the stored vectors)`);
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function waitUntilReady() {
  for (;;) {
    try {
      info = await getJSON("/api/info");
      break;
    } catch (err) {
      setStatus(err.message, !/warming up/.test(err.message));
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  const toggle = $("rerank");
  toggle.checked = Boolean(info.rerank) && info.rerank_available;
  toggle.disabled = !info.rerank_available;
  toggle.parentElement.classList.toggle("disabled", !info.rerank_available);
  if (!info.rerank_available) toggle.parentElement.title = "the index was built without --keep-tokens";
  setStatus(`${info.videos} videos indexed (${info.arch}), ready`);
}

$("search-form").addEventListener("submit", runSearch);
$("similar").addEventListener("click", moreLikeThis);
$("close-player").addEventListener("click", () => {
  $("player").pause();
  $("player-panel").hidden = true;
});
waitUntilReady();
