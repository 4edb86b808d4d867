// The preview page: paste a scene, pick a voice, style, rate and pitch per character, hear
// it streamed through Web Audio, skip or stop, download lines and the whole scene. It speaks
// the dialogue-tts protocol (protocol/PROTOCOL.md) over the server's WebSocket, one msgpack
// map per binary message.
//
// A server started with a token prints this page's address with the token in the fragment
// (http://127.0.0.1:5758/#token=...). Browsers never send a fragment to any server, and the
// page's files never hold the token: the page reads it from location.hash for its hello.

import { decode, encode } from "./msgpack.js";

// Silence between lines, as in the CLI's preview and the server's scene file (preview.py).
const SPEAKER_CHANGE_GAP = 0.45;
const SAME_SPEAKER_GAP = 0.25;
const MAX_PAUSE = 30; // seconds, as synthesize_scene accepts
const LEAD_SECONDS = 0.05; // a line's first chunk is scheduled this far ahead of now
const NARRATOR = "NARRATOR";
const STORAGE_KEY = "dialogue-tts-preview";
// The CLI preview's text format (preview.py _LINE, _PAUSE): NAME: line, NAME (style): line.
const SPEAKER_LINE = /^([^:()#][^:()]{0,63}?)\s*(?:\(([\p{L}\p{M}\p{N}_ -]+)\))?\s*:\s*(\S.*)$/u;
const PAUSE_LINE = /^\(\s*pause\s+(\d+(?:\.\d+)?)\s*s?\s*\)$/i;
const MIME_TYPES = { wav: "audio/wav", ogg: "audio/ogg" };

const $ = (id) => document.getElementById(id);
const ui = {
  connection: $("connection"),
  scene: $("scene"),
  play: $("play"),
  skip: $("skip"),
  stop: $("stop"),
  downloadScene: { wav: $("download-scene-wav"), ogg: $("download-scene-ogg") },
  nowPlaying: $("now-playing"),
  cast: document.querySelector("#cast tbody"),
  castSource: $("cast-source"),
  lines: $("lines"),
  message: $("message"),
  tryForm: $("try"),
  tryWord: $("try-word"),
  tryValue: $("try-value"),
  tryHear: $("try-hear"),
  tryClear: $("try-clear"),
  tryResult: $("try-result"),
};

/** What reached the Web Audio graph, for the curious and for tests. */
const stats = { heardSamples: 0, peak: 0, scheduledSamples: 0, contextRate: 0 };

let client = null;
let welcome = null;
let serverCast = null; // the connection's cast: {source, default, styles, speakers}
let tokenRefused = false;
let sceneLines = []; // [{speaker, text, style, pause}]
const cast = new Map(); // character -> {voice, style, rate, pitch}; "" = as the cast says
let playback = null; // the scene being played, see startPlayback()
let runCount = 0;
let rendering = false;
let audio = null; // {context, tap} once the first play created it
const tries = {}; // word -> respelling or /phonemes/ tried here: every line's own lexicon
let pronounceRun = 0; // drops the replies of an older refresh
let pronounceTimer = null;

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
        this.request({ type: "hello", protocol: 1, client: "preview-page", token: pageToken() })
          .then(resolve, reject);
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

/** The server's token, from the page address's fragment (#token=...), if there is one. */
function pageToken() {
  return new URLSearchParams(location.hash.slice(1)).get("token") || undefined;
}

function connect() {
  ui.connection.textContent = "Connecting…";
  tokenRefused = false;
  client = new ProtocolClient(`ws://${location.host}/`, {
    onEvent: handleEvent,
    onClose: () => {
      welcome = null;
      serverCast = null;
      window.dialoguePreview.ready = false;
      if (playback) abandonPlayback("Disconnected.");
      updateButtons();
      if (tokenRefused) { // retrying cannot help; a new address (hashchange) reconnects
        ui.connection.textContent = (pageToken() === undefined
          ? "This server needs a token. "
          : "The server refused this page's token. ") +
          "Open the page at the address that dialogue-tts serve printed (it ends in #token=…).";
        return;
      }
      ui.connection.textContent = "Disconnected from the server; retrying…";
      setTimeout(connect, 2000);
    },
  });
  client.connect().then(async (reply) => {
    welcome = reply;
    // The cast names the styles each character can use; without it (an older server) the
    // page still works, with no styles to offer.
    const castReply = await client.request({ type: "cast" }).catch(() => null);
    if (welcome !== reply) return; // disconnected meanwhile
    serverCast = castReply?.cast ?? null;
    window.dialoguePreview.ready = true;
    ui.connection.textContent =
      `Connected to ${reply.server}: ${reply.voices.length} voice(s).`;
    renderCast();
    updateButtons();
    refreshPronunciations();
  }, (error) => {
    if (error.code === "unauthorized") tokenRefused = true; // then onClose reports it
  });
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
  line.phase = "queued";
  client.request({ type: "say", ...lineRequest(line), line: line.lineId, format: "s16le" })
    .catch((error) => {
      if (playback === run) finishLine(line, "error", error.message);
    });
  // The next line is synthesized now, so it starts at once when this one ends or is skipped.
  const next = run.lines[run.cursor + 1];
  if (next !== undefined) {
    client.request({ type: "prepare", ...lineRequest(next) })
      .catch(() => {}); // only a head start: the say reports real problems
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
    const afterPrevious = run.playhead + (run.gapNext ? gapBefore(run, line) : 0);
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

/** The silence before ``line`` after the previous one played to its end (preview.mix). */
function gapBefore(run, line) {
  const previous = run.lines[run.lines.indexOf(line) - 1];
  if (previous === undefined) return 0;
  return (previous.speaker === line.speaker ? SAME_SPEAKER_GAP : SPEAKER_CHANGE_GAP) + line.pause;
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

async function downloadLine(index, format) {
  try {
    const reply = await client.request({
      type: "synthesize", ...lineRequest(sceneLines[index]), format,
    });
    saveFile(reply.data, `${fileStem(index)}.${format}`, MIME_TYPES[format]);
  } catch (error) {
    showError(error);
  }
}

/**
 * The whole scene as one file, rendered and mixed by the server (synthesize_scene): the same
 * gaps as playback, every line complete (skipped or unplayed ones too), and OGG Vorbis,
 * which a browser cannot encode itself.
 */
async function downloadScene(format) {
  rendering = true;
  updateButtons();
  showMessage(`Rendering the scene (${sceneLines.length} lines)…`);
  try {
    const reply = await client.request({
      type: "synthesize_scene", format,
      // A scene's lines take the cast's lexicon only: tries are for lines and their files.
      lines: sceneLines.map((line) => ({
        ...lineRequest(line), lexicon: undefined, pause: line.pause || undefined,
      })),
    });
    saveFile(reply.data, `scene.${format}`, MIME_TYPES[format]);
    showMessage(`Scene saved as ${format.toUpperCase()}: ${reply.duration.toFixed(1)} s.`);
  } catch (error) {
    // "synthesize_scene.lines[3].rate: ..." and "lines[3]: ..." name a line from 0.
    error.message = String(error.message).replace(
      /(?:synthesize_scene\.)?lines\[(\d+)\](?:\.|: )?/g,
      (_, index) => `line ${Number(index) + 1} (${sceneLines[index]?.speaker ?? "?"}): `,
    );
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
  let pause = 0;
  for (const raw of text.split(/\r?\n/)) {
    const row = raw.trim();
    if (row === "" || row.startsWith("#")) continue;
    const pauseMatch = PAUSE_LINE.exec(row);
    if (pauseMatch) {
      pause = Math.min(MAX_PAUSE, pause + Number(pauseMatch[1]));
      continue;
    }
    const match = SPEAKER_LINE.exec(row);
    if (match) {
      const style = match[2]?.trim() || undefined;
      lines.push({ speaker: match[1].trim(), style, text: match[3].trim(), pause });
    } else lines.push({ speaker: NARRATOR, style: undefined, text: row, pause });
    pause = 0;
  }
  return lines;
}

function castFor(speaker) {
  if (!cast.has(speaker)) cast.set(speaker, { voice: "", style: "", rate: 1, pitch: 1 });
  return cast.get(speaker);
}

/** The cast's entry for ``speaker``: exact name, then any case, then the default (cast.py). */
function castEntry(speaker) {
  const speakers = serverCast?.speakers ?? {};
  if (Object.hasOwn(speakers, speaker)) return speakers[speaker];
  const folded = speaker.toLowerCase();
  const named = Object.keys(speakers).find((name) => name.toLowerCase() === folded);
  return named === undefined ? serverCast?.default ?? {} : speakers[named];
}

/** The styles ``speaker`` may use: the cast's shared ones and the speaker's own. */
function styleNames(speaker) {
  const names = new Set([
    ...Object.keys(serverCast?.styles ?? {}), ...Object.keys(castEntry(speaker).styles ?? {}),
  ]);
  return [...names].sort();
}

/** A line's fields for say, prepare, synthesize and synthesize_scene: the server resolves
 * the speaker and style through its cast; voice only when chosen here, rate and pitch
 * multiply the cast's. A line's own (style) wins over its character's. */
function lineRequest(line) {
  const settings = castFor(line.speaker);
  return {
    speaker: line.speaker,
    text: line.text,
    style: line.style ?? (settings.style || undefined),
    voice: settings.voice || undefined,
    rate: settings.rate,
    pitch: settings.pitch,
    lexicon: Object.keys(tries).length > 0 ? { ...tries } : undefined,
  };
}

function sceneChanged() {
  sceneLines = parseScene(ui.scene.value);
  renderLines();
  renderCast();
  updateButtons();
  save();
  clearTimeout(pronounceTimer); // typing: ask once it pauses
  pronounceTimer = setTimeout(refreshPronunciations, 300);
}

// --- pronunciations -------------------------------------------------------------------

/** Ask the server which words of each line the lexicon (and this page's tries) change. */
async function refreshPronunciations() {
  if (!welcome) return;
  const run = ++pronounceRun;
  const rows = [...ui.lines.children];
  await Promise.all(sceneLines.map(async (line, index) => {
    const { rate, pitch, ...fields } = lineRequest(line);
    const reply = await client.request({ type: "pronounce", ...fields }).catch(() => null);
    if (run !== pronounceRun || !reply) return; // an older refresh, or a line in error
    const words = rows[index]?.querySelector(".words");
    words?.replaceChildren(...reply.words.map(([start, end, phonemes, entry]) => {
      const word = line.text.slice(start, end);
      const button = element("button", {
        type: "button", title: `lexicon: ${entry}; click to try another way`,
      }, `${word} → /${phonemes}/`);
      button.addEventListener("click", () => {
        ui.tryWord.value = word;
        ui.tryValue.value = entry;
        ui.tryValue.focus();
      });
      return button;
    }));
  }));
  window.dialoguePreview.pronounced = run;
}

/** Say a word as the form asks, in the first line that has it (else on its own). */
async function tryPronunciation() {
  const word = ui.tryWord.value.trim();
  const value = ui.tryValue.value.trim();
  if (!word || !value) return;
  const trial = { [word]: value };
  const pattern = new RegExp(
    `(?<![\\p{L}\\p{N}'’])${escapeRegExp(word)}(?![\\p{L}\\p{N}])`, "iu",
  );
  const index = sceneLines.findIndex((line) => pattern.test(line.text));
  const line = index >= 0 ? sceneLines[index] : { speaker: NARRATOR, text: `${word}.` };
  try { // the server checks the entry before it is kept
    const reply = await client.request({
      type: "pronounce", ...lineRequest(line), lexicon: { ...tries, ...trial },
    });
    const said = reply.words.find(([start, end]) =>
      line.text.slice(start, end).toLowerCase() === word.toLowerCase());
    ui.tryResult.textContent = `${tomlKey(word)} = ${JSON.stringify(value)}` +
      (said ? ` # said /${said[2]}/` : "");
  } catch (error) {
    showError(error);
    return;
  }
  Object.assign(tries, trial);
  updateButtons();
  refreshPronunciations();
  if (index >= 0) await startPlayback([index]);
  else await playFile({ type: "synthesize", ...lineRequest(line), format: "wav" });
}

async function playFile(request) {
  const reply = await client.request(request);
  const url = URL.createObjectURL(new Blob([reply.data], { type: "audio/wav" }));
  const player = new Audio(url);
  player.addEventListener("ended", () => URL.revokeObjectURL(url));
  await player.play();
}

function clearTries() {
  for (const word of Object.keys(tries)) delete tries[word];
  ui.tryResult.textContent = "";
  updateButtons();
  refreshPronunciations();
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** A word as a TOML key: bare when it can be, else quoted. */
function tomlKey(word) {
  return /^[A-Za-z0-9_-]+$/.test(word) ? word : JSON.stringify(word);
}

function renderLines() {
  const rows = sceneLines.map((line, index) => {
    const row = element("li", { "data-index": String(index), "data-status": "" });
    const who = line.style === undefined ? line.speaker : `${line.speaker} (${line.style})`;
    row.append(
      element("span", { class: "speaker" }, who),
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
    const words = element("span", { class: "words", "aria-label": "Words the lexicon changes" });
    row.append(actions, words);
    return row;
  });
  ui.lines.replaceChildren(...rows);
}

function renderCast() {
  const speakers = [...new Set(sceneLines.map((line) => line.speaker))];
  ui.castSource.textContent = serverCast ? `The server's cast: ${serverCast.source}.` : "";
  const rows = speakers.map((speaker) => {
    const settings = castFor(speaker);
    const row = element("tr");
    row.append(
      element("th", { scope: "row" }, speaker),
      cell(voiceSelect(speaker, settings)),
      cell(styleSelect(speaker, settings)),
      cell(numberInput(settings, "rate", [0.1, 10], `Speaking rate for ${speaker} (1 is normal)`)),
      cell(numberInput(settings, "pitch", [0.5, 2], `Pitch for ${speaker} (1 is unchanged)`)),
    );
    return row;
  });
  ui.cast.replaceChildren(...rows);
}

function voiceSelect(speaker, settings) {
  const select = element("select", { "aria-label": `Voice for ${speaker}`, class: "voice" });
  const castVoice = castEntry(speaker).voice ?? welcome?.default_voice;
  select.append(element("option", { value: "" }, castVoice ? `as cast (${castVoice})` : "as cast"));
  for (const info of welcome?.voices ?? []) {
    const label = [info.name, info.language, info.quality].filter(Boolean).join(" · ");
    select.append(element("option", { value: info.name }, label));
  }
  if (welcome && !welcome.voices.some((info) => info.name === settings.voice)) {
    settings.voice = "";
  }
  if (welcome) select.value = settings.voice;
  select.addEventListener("change", () => { settings.voice = select.value; save(); });
  return select;
}

function styleSelect(speaker, settings) {
  const select = element("select", { "aria-label": `Style for ${speaker}`, class: "style" });
  let names = styleNames(speaker);
  if (serverCast === null) names = settings.style ? [settings.style] : []; // not loaded yet
  else if (!names.includes(settings.style)) settings.style = "";
  select.append(element("option", { value: "" }, "none"));
  for (const name of names) select.append(element("option", { value: name }, name));
  select.value = settings.style;
  select.disabled = names.length === 0;
  if (select.disabled) select.title = "The server's cast defines no styles for this character.";
  select.addEventListener("change", () => { settings.style = select.value; save(); });
  return select;
}

/** A number field for ``settings[key]``, kept within ``[low, high]`` (else 1). */
function numberInput(settings, key, [low, high], label) {
  const input = element("input", {
    type: "number", min: String(low), max: String(high), step: "0.05",
    value: String(settings[key]), "aria-label": label, class: key,
  });
  input.addEventListener("change", () => {
    const value = Number(input.value);
    settings[key] = input.value !== "" && value >= low && value <= high ? value : 1;
    input.value = String(settings[key]);
    save();
  });
  return input;
}

function updateButtons() {
  const connected = welcome !== null;
  const active = Boolean(playback?.active);
  ui.play.disabled = !connected || sceneLines.length === 0;
  ui.skip.disabled = !active;
  ui.stop.disabled = !active;
  ui.tryHear.disabled = !connected;
  ui.tryClear.disabled = Object.keys(tries).length === 0;
  for (const button of Object.values(ui.downloadScene)) {
    button.disabled = !connected || sceneLines.length === 0 || rendering;
  }
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
      const number = (value, low, high) => (value >= low && value <= high ? value : 1);
      cast.set(speaker, {
        voice: String(settings.voice ?? ""),
        style: String(settings.style ?? ""),
        rate: number(Number(settings.rate), 0.1, 10),
        pitch: number(Number(settings.pitch), 0.5, 2),
      });
    }
  } catch { /* a damaged entry is ignored */ }
}

// --- start ----------------------------------------------------------------------------

window.dialoguePreview = {
  ready: false,
  pronounced: 0, // the last refresh of the lines' pronunciations that finished
  tries: () => ({ ...tries }),
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
ui.tryForm.addEventListener("submit", (event) => {
  event.preventDefault();
  tryPronunciation().catch(showError);
});
ui.tryClear.addEventListener("click", clearTries);
ui.stop.addEventListener("click", stopPlayback);
for (const [format, button] of Object.entries(ui.downloadScene)) {
  button.addEventListener("click", () => downloadScene(format));
}
window.addEventListener("hashchange", () => {
  if (tokenRefused) connect(); // the user pasted the address with the token
});
document.addEventListener("keydown", (event) => {
  if (event.altKey && event.key.toLowerCase() === "s" && playback?.active) {
    event.preventDefault();
    skipLine();
  } else if (event.key === "Escape" && playback?.active) stopPlayback();
});
sceneChanged();
setInterval(tick, 100);
connect();
