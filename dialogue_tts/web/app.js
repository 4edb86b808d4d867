// The preview page: paste a scene, pick a voice and rate per character, hear it streamed
// through Web Audio, skip or stop, download lines. It speaks the dialogue-tts protocol
// (protocol/PROTOCOL.md) over the server's WebSocket, one msgpack map per binary message.

import { decode, encode } from "./msgpack.js";
import { parseWav, resampled, wavFile } from "./wav.js";

const GAP_SECONDS = 0.35; // silence between lines, in playback and in the scene file
const LEAD_SECONDS = 0.05; // a line's first chunk is scheduled this far ahead of now
const NARRATOR = "NARRATOR";
const STORAGE_KEY = "dialogue-tts-preview";
const SPEAKER_LINE = /^([^\s:#][^:]{0,39}?)\s*:\s*(\S.*)$/;

const $ = (id) => document.getElementById(id);
const ui = {
  connection: $("connection"),
  scene: $("scene"),
  play: $("play"),
  skip: $("skip"),
  stop: $("stop"),
  downloadScene: $("download-scene"),
  nowPlaying: $("now-playing"),
  cast: document.querySelector("#cast tbody"),
  lines: $("lines"),
  message: $("message"),
};

/** What reached the Web Audio graph, for the curious and for tests. */
const stats = { heardSamples: 0, peak: 0, scheduledSamples: 0, contextRate: 0 };

let client = null;
let welcome = null;
let sceneLines = []; // [{speaker, text}]
const cast = new Map(); // character -> {voice, rate}
let playback = null; // the scene being played, see startPlayback()
let runCount = 0;
let rendering = false;
let audio = null; // {context, tap} once the first play created it

// --- the protocol ---------------------------------------------------------------------

class ProtocolClient {
  constructor(url, { onEvent, onClose }) {
    this.url = url;
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.nextId = 1;
    this.pending = new Map();
    this.socket = null;
  }

  /** Open the socket and say hello; resolves with the welcome. */
  connect() {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url);
      socket.binaryType = "arraybuffer";
      this.socket = socket;
      socket.onopen = () => {
        this.request({ type: "hello", protocol: 1, client: "preview-page" }).then(resolve, reject);
      };
      socket.onmessage = (message) => this.receive(message.data);
      socket.onclose = (close) => {
        for (const { reject: fail } of this.pending.values()) fail(new Error("disconnected"));
        this.pending.clear();
        reject(new Error(`connection closed (${close.code}) ${close.reason}`));
        this.onClose(close);
      };
    });
  }

  send(message) {
    this.socket.send(encode(message));
  }

  /** Send a request; resolves with its reply, rejects with its error. */
  request(message) {
    const id = this.nextId;
    this.nextId += 1;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.send({ ...message, id });
    });
  }

  receive(data) {
    if (typeof data === "string") return; // the server only sends binary messages
    const event = decode(new Uint8Array(data));
    const waiting = event.id === undefined ? undefined : this.pending.get(event.id);
    if (waiting === undefined) {
      this.onEvent(event);
      return;
    }
    this.pending.delete(event.id);
    if (event.type === "error") waiting.reject(Object.assign(new Error(event.message), event));
    else waiting.resolve(event);
  }
}

function connect() {
  ui.connection.textContent = "Connecting…";
  client = new ProtocolClient(`ws://${location.host}/`, {
    onEvent: handleEvent,
    onClose: () => {
      welcome = null;
      window.dialoguePreview.ready = false;
      if (playback) abandonPlayback("Disconnected.");
      ui.connection.textContent = "Disconnected from the server; retrying…";
      updateButtons();
      setTimeout(connect, 2000);
    },
  });
  client.connect().then((reply) => {
    welcome = reply;
    window.dialoguePreview.ready = true;
    ui.connection.textContent =
      `Connected to ${reply.server}: ${reply.voices.length} voice(s).`;
    renderCast();
    updateButtons();
  }, () => {}); // onClose reports and retries
}

function handleEvent(event) {
  if (event.type === "error") {
    showMessage(`Server error ${event.code}: ${event.message}`);
    return;
  }
  const line = playback?.byId.get(event.line);
  if (line === undefined) return; // a line of an earlier run
  if (event.type === "started") {
    line.phase = "started";
    line.sampleRate = event.sample_rate;
  } else if (event.type === "audio") {
    receiveAudio(line, event.data);
  } else if (event.type === "finished") {
    finishLine(line, event.status, event.message);
  }
}

// --- playback -------------------------------------------------------------------------

async function ensureAudio() {
  if (audio === null) {
    const context = new AudioContext({ latencyHint: "interactive" });
    await context.audioWorklet.addModule("tap-worklet.js");
    const tap = new AudioWorkletNode(context, "sample-tap");
    tap.port.onmessage = (message) => Object.assign(stats, message.data);
    tap.connect(context.destination);
    stats.contextRate = context.sampleRate;
    audio = { context, tap };
  }
  if (audio.context.state !== "running") await audio.context.resume();
  return audio;
}

/** Play ``indexes`` of the scene in order, each line once the previous one has finished. */
async function startPlayback(indexes) {
  if (!welcome || indexes.length === 0) return;
  if (playback) stopPlayback();
  await ensureAudio();
  runCount += 1;
  const lines = indexes.map((index) => ({
    index,
    ...sceneLines[index],
    lineId: `run${runCount}-${index + 1}`,
    phase: "waiting", // waiting -> queued -> started -> finished
    result: null, // the finished status, or "stopped"
    localSkip: false,
    sampleRate: 22050,
    chunks: [],
    sources: [],
    startAt: null,
    endAt: null,
  }));
  playback = {
    lines,
    byId: new Map(lines.map((line) => [line.lineId, line])),
    byIndex: new Map(lines.map((line) => [line.index, line])),
    cursor: 0,
    playhead: 0,
    gapNext: false,
    stopped: false,
    active: true,
  };
  ui.scene.readOnly = true;
  showMessage("");
  updateButtons();
  sayNext();
}

function sayNext() {
  const run = playback;
  if (!run || run.stopped) return;
  const line = run.lines[run.cursor];
  if (line === undefined) return;
  const settings = castFor(line.speaker);
  line.phase = "queued";
  client.request({
    type: "say", speaker: line.speaker, text: line.text, line: line.lineId,
    voice: settings.voice, rate: settings.rate, format: "s16le",
  }).catch((error) => {
    if (playback === run) finishLine(line, "error", error.message);
  });
  // The next line is synthesized now, so it starts at once when this one ends or is skipped.
  const next = run.lines[run.cursor + 1];
  if (next !== undefined) {
    const nextSettings = castFor(next.speaker);
    client.request({
      type: "prepare", text: next.text, voice: nextSettings.voice, rate: nextSettings.rate,
    }).catch(() => {}); // only a head start: the say reports real problems
  }
}

function finishLine(line, status, message) {
  if (line.phase === "finished") return;
  line.phase = "finished";
  line.result = status;
  if (status === "error") showMessage(`${line.speaker}: ${message ?? "synthesis failed"}`);
  const run = playback;
  if (run.lines[run.cursor] !== line) return;
  run.cursor += 1;
  run.gapNext = status === "done";
  sayNext();
}

function receiveAudio(line, data) {
  if (line.localSkip || playback.stopped) return;
  const pcm = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const count = data.byteLength >> 1;
  if (count === 0) return;
  const buffer = audio.context.createBuffer(1, count, line.sampleRate);
  const samples = buffer.getChannelData(0);
  for (let index = 0; index < count; index += 1) {
    samples[index] = pcm.getInt16(index * 2, true) / 32768;
  }
  line.chunks.push(buffer);
  scheduleChunk(line, buffer);
}

/** Queue ``buffer`` after everything scheduled so far (gapless within a line). */
function scheduleChunk(line, buffer) {
  const run = playback;
  const now = audio.context.currentTime;
  if (line.startAt === null) {
    const afterPrevious = run.playhead + (run.gapNext ? GAP_SECONDS : 0);
    line.startAt = Math.max(now + LEAD_SECONDS, afterPrevious);
    run.playhead = line.startAt;
  }
  const at = Math.max(run.playhead, now + 0.01); // after an underrun, as soon as possible
  const source = audio.context.createBufferSource();
  source.buffer = buffer;
  source.connect(audio.tap);
  source.start(at);
  line.sources.push(source);
  run.playhead = at + buffer.duration;
  line.endAt = run.playhead;
  stats.scheduledSamples += buffer.length;
}

function silence(line) {
  for (const source of line.sources) {
    try { source.stop(); } catch { /* never started */ }
  }
  line.sources = [];
}

/** The line being heard, or about to be: the one Skip acts on. */
function currentLine() {
  if (!playback) return undefined;
  const now = audio.context.currentTime;
  return playback.lines.find((line) => !line.localSkip && (
    line.phase === "queued" || line.phase === "started" ||
    (line.endAt !== null && now < line.endAt)));
}

function skipLine() {
  const line = currentLine();
  if (line === undefined) return;
  line.localSkip = true;
  silence(line);
  playback.playhead = audio.context.currentTime;
  playback.gapNext = false;
  if (line.phase === "started") {
    client.request({ type: "skip", speaker: line.speaker }).catch(showError);
  } else if (line.phase === "queued") {
    client.request({ type: "cancel", line: line.lineId }).catch(() => {});
  } else {
    // The server had finished it (its tail was still playing): bring the next line forward.
    for (const later of playback.lines.filter((other) => other.index > line.index)) {
      silence(later);
      later.startAt = null;
      for (const chunk of later.chunks) scheduleChunk(later, chunk);
    }
  }
}

function stopPlayback() {
  if (!playback) return;
  client?.request({ type: "clear" }).catch(() => {});
  abandonPlayback("Stopped.");
}

function abandonPlayback(reason) {
  playback.stopped = true;
  for (const line of playback.lines) {
    silence(line);
    if (line.phase !== "finished") line.result = "stopped";
    line.endAt = null;
  }
  playback.active = false;
  ui.scene.readOnly = false;
  ui.nowPlaying.textContent = reason;
  updateButtons();
}

/** What a line's row says: where its audio is, not only where the server is. */
function displayStatus(line) {
  if (line === undefined) return "";
  if (line.localSkip) return "skipped";
  const now = audio ? audio.context.currentTime : 0;
  if (line.startAt !== null && line.endAt !== null && now >= line.startAt && now < line.endAt) {
    return "playing";
  }
  if (line.result === "stopped" || line.result === "cancelled") return "stopped";
  if (line.phase === "finished" && (line.endAt === null || now >= line.endAt)) return line.result;
  if (line.phase === "waiting") return "waiting";
  return "queued";
}

/** Refresh statuses ten times a second; end the run when its last sound has played. */
function tick() {
  const run = playback;
  let playing;
  for (const row of ui.lines.children) {
    const status = displayStatus(run?.byIndex.get(Number(row.dataset.index)));
    if (row.dataset.status !== status) {
      row.dataset.status = status;
      row.querySelector(".status").textContent = status;
    }
    if (status === "playing") {
      row.setAttribute("aria-current", "true");
      playing = row;
    } else row.removeAttribute("aria-current");
  }
  if (run?.active) {
    if (playing) {
      const text = `Playing ${playing.querySelector(".speaker").textContent}: ` +
        playing.querySelector(".text").textContent;
      if (ui.nowPlaying.textContent !== text) ui.nowPlaying.textContent = text;
    }
    const done = run.lines.every((line) => line.phase === "finished" &&
      (line.localSkip || line.endAt === null || audio.context.currentTime >= line.endAt));
    if (done) {
      run.active = false;
      ui.scene.readOnly = false;
      ui.nowPlaying.textContent = "Finished.";
      updateButtons();
    }
  }
}

// --- downloads ------------------------------------------------------------------------

async function synthesize(index, format) {
  const line = sceneLines[index];
  const settings = castFor(line.speaker);
  return client.request({
    type: "synthesize", text: line.text, voice: settings.voice, rate: settings.rate, format,
  });
}

async function downloadLine(index, format) {
  try {
    const reply = await synthesize(index, format);
    saveFile(reply.data, `${fileStem(index)}.${format}`, format === "wav" ? "audio/wav" : "audio/ogg");
  } catch (error) {
    showError(error);
  }
}

/**
 * The whole scene as one WAV: each line rendered by the server (synthesize, so skipped or
 * unplayed lines are complete too), joined here with a short gap. WAV only: joining is
 * plain PCM work, while an OGG would need a Vorbis encoder in the page.
 */
async function downloadScene() {
  rendering = true;
  updateButtons();
  try {
    const parts = [];
    for (let index = 0; index < sceneLines.length; index += 1) {
      showMessage(`Rendering line ${index + 1} of ${sceneLines.length}…`);
      parts.push(parseWav((await synthesize(index, "wav")).data));
    }
    const sampleRate = parts[0].sampleRate;
    const gap = Math.round(GAP_SECONDS * sampleRate);
    const joined = [];
    for (const part of parts) {
      joined.push(await resampled(part, sampleRate));
      if (joined.length < parts.length * 2 - 1) joined.push(new Int16Array(gap));
    }
    const total = joined.reduce((sum, samples) => sum + samples.length, 0);
    const pcm = new Int16Array(total);
    let offset = 0;
    for (const samples of joined) {
      pcm.set(samples, offset);
      offset += samples.length;
    }
    saveFile(wavFile(pcm, sampleRate), "scene.wav", "audio/wav");
    showMessage(`Scene saved: ${(total / sampleRate).toFixed(1)} s.`);
  } catch (error) {
    showError(error);
  } finally {
    rendering = false;
    updateButtons();
  }
}

function saveFile(bytes, name, type) {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function fileStem(index) {
  const speaker = sceneLines[index].speaker.toLowerCase().replace(/[^a-z0-9]+/g, "-");
  return `${String(index + 1).padStart(2, "0")}-${speaker || "line"}`;
}

// --- the scene and the cast -----------------------------------------------------------

function parseScene(text) {
  const lines = [];
  for (const raw of text.split(/\r?\n/)) {
    const row = raw.trim();
    if (row === "" || row.startsWith("#")) continue;
    const match = SPEAKER_LINE.exec(row);
    if (match) lines.push({ speaker: match[1].trim(), text: match[2].trim() });
    else lines.push({ speaker: NARRATOR, text: row });
  }
  return lines;
}

function castFor(speaker) {
  if (!cast.has(speaker)) cast.set(speaker, { voice: welcome?.default_voice ?? "", rate: 1.0 });
  return cast.get(speaker);
}

function sceneChanged() {
  sceneLines = parseScene(ui.scene.value);
  renderLines();
  renderCast();
  updateButtons();
  save();
}

function renderLines() {
  const rows = sceneLines.map((line, index) => {
    const row = element("li", { "data-index": String(index), "data-status": "" });
    row.append(
      element("span", { class: "speaker" }, line.speaker),
      element("span", { class: "text" }, line.text),
      element("span", { class: "status" }, ""),
    );
    const actions = element("span", { class: "actions" });
    const label = `line ${index + 1} (${line.speaker})`;
    const play = element("button", { type: "button", "aria-label": `Play ${label}` }, "Play");
    play.addEventListener("click", () => startPlayback([index]).catch(showError));
    actions.append(play);
    for (const format of ["wav", "ogg"]) {
      const button = element("button", {
        type: "button", class: `download-${format}`,
        "aria-label": `Download ${label} as ${format.toUpperCase()}`,
      }, format.toUpperCase());
      button.addEventListener("click", () => downloadLine(index, format));
      actions.append(button);
    }
    row.append(actions);
    return row;
  });
  ui.lines.replaceChildren(...rows);
}

function renderCast() {
  const speakers = [...new Set(sceneLines.map((line) => line.speaker))];
  const rows = speakers.map((speaker) => {
    const settings = castFor(speaker);
    const voice = element("select", { "aria-label": `Voice for ${speaker}` });
    for (const info of welcome?.voices ?? [{ name: settings.voice, language: "" }]) {
      const label = [info.name, info.language, info.quality].filter(Boolean).join(" · ");
      voice.append(element("option", { value: info.name }, label));
    }
    if (welcome && !welcome.voices.some((info) => info.name === settings.voice)) {
      settings.voice = welcome.default_voice;
    }
    voice.value = settings.voice;
    voice.addEventListener("change", () => { settings.voice = voice.value; save(); });
    const rate = element("input", {
      type: "number", min: "0.5", max: "2", step: "0.05", value: String(settings.rate),
      "aria-label": `Speaking rate for ${speaker} (1 is normal)`,
    });
    rate.addEventListener("change", () => {
      const value = Number(rate.value);
      settings.rate = Number.isFinite(value) && value >= 0.1 && value <= 10 ? value : 1.0;
      rate.value = String(settings.rate);
      save();
    });
    const row = element("tr");
    row.append(element("th", { scope: "row" }, speaker), cell(voice), cell(rate));
    return row;
  });
  ui.cast.replaceChildren(...rows);
}

function updateButtons() {
  const connected = welcome !== null;
  const active = Boolean(playback?.active);
  ui.play.disabled = !connected || sceneLines.length === 0;
  ui.skip.disabled = !active;
  ui.stop.disabled = !active;
  ui.downloadScene.disabled = !connected || sceneLines.length === 0 || rendering;
}

// --- small helpers --------------------------------------------------------------------

function element(tag, attributes = {}, text = undefined) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function cell(child) {
  const node = document.createElement("td");
  node.append(child);
  return node;
}

function showMessage(text) {
  ui.message.textContent = text;
}

function showError(error) {
  showMessage(error.code ? `${error.code}: ${error.message}` : String(error.message ?? error));
}

function save() {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify({
      scene: ui.scene.value, cast: Object.fromEntries(cast),
    }));
  } catch { /* private mode or full: the page works without it */ }
}

function restore() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "null");
    if (saved === null) return;
    if (typeof saved.scene === "string") ui.scene.value = saved.scene;
    for (const [speaker, settings] of Object.entries(saved.cast ?? {})) {
      cast.set(speaker, { voice: String(settings.voice ?? ""), rate: Number(settings.rate) || 1 });
    }
  } catch { /* a damaged entry is ignored */ }
}

// --- start ----------------------------------------------------------------------------

window.dialoguePreview = {
  ready: false,
  stats,
  statuses: () => [...ui.lines.children].map((row) => row.dataset.status),
  results: () => playback?.lines.map((line) => line.result) ?? [],
  receivedSamples: () => playback?.lines.map((line) =>
    line.chunks.reduce((sum, chunk) => sum + chunk.length, 0)) ?? [],
};

restore();
ui.scene.addEventListener("input", sceneChanged);
ui.play.addEventListener("click", () => {
  startPlayback(sceneLines.map((_, index) => index)).catch(showError);
});
ui.skip.addEventListener("click", skipLine);
ui.stop.addEventListener("click", stopPlayback);
ui.downloadScene.addEventListener("click", downloadScene);
document.addEventListener("keydown", (event) => {
  if (event.altKey && event.key.toLowerCase() === "s" && playback?.active) {
    event.preventDefault();
    skipLine();
  } else if (event.key === "Escape" && playback?.active) stopPlayback();
});
sceneChanged();
setInterval(tick, 100);
connect();
