// The search page of `tldr-jax serve`: plain JavaScript against the JSON API, nothing from the network.
"use strict";

const $ = (id) => document.getElementById(id);
const K = 12;
let info = null;
let current = null;  // the video shown in the player: {row, video}
let tokenRequest = 0;  // the latest token view asked for (an older answer is dropped)
let tokenURL = null;  // the object URL of the token view shown

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

function clock(seconds) {  // 75.5 -> "1:15.5"
  const tenths = Math.round(seconds * 10);
  const whole = Math.floor(tenths / 10), frac = tenths % 10;
  const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
  const mm = h ? String(m).padStart(2, "0") : String(m);
  return (h ? `${h}:` : "") + `${mm}:${String(s).padStart(2, "0")}` + (frac ? `.${frac}` : "");
}

function span(start, end) { return `${clock(start)}–${clock(end)}`; }

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
    if (hit.start !== undefined) name.textContent += ` @ ${span(hit.start, hit.end)}`;
    const scores = document.createElement("div");
    scores.className = "scores";
    scores.textContent = scoreText(hit);
    item.append(img, name, scores);
    item.addEventListener("click", () => play(hit.row, hit));
    item.addEventListener("keydown", (e) => { if (e.key === "Enter") play(hit.row, hit); });
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
    const windows = result.windows > result.videos ? ` (${result.windows} moments)` : "";
    setStatus(`${result.hits.length} of ${result.videos} videos${windows}, ${how}, ${result.ms} ms`);
  } catch (err) {
    $("results").replaceChildren();  // no stale results under an error
    setStatus(err.message, true);
  }
}

// The other matching moments of the video playing: each one a button that plays the video from it.
function showMoments(video, hit) {
  const list = $("moments");
  list.replaceChildren();
  const moments = hit && hit.moments ? hit.moments : [];
  list.hidden = video.start === undefined;
  if (list.hidden) return;
  const all = [{ start: video.start, end: video.end, score: hit ? hit.score : undefined }, ...moments];
  for (const m of all) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "moment";
    button.textContent = span(m.start, m.end) + (m.score === undefined ? "" : ` (${m.score.toFixed(3)})`);
    button.classList.toggle("active", m === all[0]);
    button.addEventListener("click", () => {
      for (const b of list.querySelectorAll("button")) b.classList.toggle("active", b === button);
      seek(video, m.start, m.end);
    });
    item.append(button);
    list.append(item);
  }
}

// Play `video` from `start` to `end` (a media fragment: the player starts there and stops at `end`).
function seek(video, start, end) {
  if (!video.playable) return;
  const player = $("player");
  player.src = `${video.media}#t=${start},${end}`;
  player.play().catch(() => {});
}

async function play(row, hit) {
  try {
    const video = await getJSON(`/api/videos/${row}`);
    current = video;
    $("player-panel").hidden = false;
    $("player-title").textContent = video.video;
    $("player-meta").textContent = `${video.frames} frames sampled · ${(video.size / 1024).toFixed(0)} KiB`
      + (video.playable ? "" : " · not a playable video file (a .npy clip)");
    const player = $("player");
    player.poster = video.thumbnail;
    if (video.start !== undefined) $("player-meta").textContent += ` · moment ${span(video.start, video.end)}`;
    if (video.playable) { player.src = video.play || video.media; player.play().catch(() => {}); }
    else { player.removeAttribute("src"); player.load(); }
    showMoments(video, hit);
    showTokens(video);
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function showTokens(video) {
  const mine = ++tokenRequest;
  const img = $("token-img");
  const note = $("token-status");
  img.hidden = true;
  note.classList.remove("error");
  note.textContent = "running the model on this clip for its token view…";
  try {
    const response = await fetch(video.tokens);
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || `HTTP ${response.status}`);
    }
    const blob = await response.blob();
    if (mine !== tokenRequest) return;
    if (tokenURL) URL.revokeObjectURL(tokenURL);
    tokenURL = URL.createObjectURL(blob);
    img.src = tokenURL;
    img.alt = `vid-TLDR token view of ${video.video}`;
    img.hidden = false;
    note.textContent = "";
  } catch (err) {
    if (mine !== tokenRequest) return;
    note.textContent = `no token view: ${err.message}`;
    note.classList.add("error");
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
