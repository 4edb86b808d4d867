// WAV files for the scene download: read the server's 16-bit mono WAVs, bring them to one
// sample rate, write the joined PCM as one WAV.

/** The 16-bit mono PCM of a WAV file (the server's kind: format 1, one channel). */
export function parseWav(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (offset) => String.fromCharCode(...bytes.subarray(offset, offset + 4));
  if (tag(0) !== "RIFF" || tag(8) !== "WAVE") throw new Error("not a WAV file");
  let sampleRate = 0;
  for (let offset = 12; offset + 8 <= bytes.length;) {
    const size = view.getUint32(offset + 4, true);
    if (tag(offset) === "fmt ") {
      if (view.getUint16(offset + 8, true) !== 1 || view.getUint16(offset + 10, true) !== 1 ||
          view.getUint16(offset + 22, true) !== 16) throw new Error("not 16-bit mono PCM");
      sampleRate = view.getUint32(offset + 12, true);
    } else if (tag(offset) === "data") {
      const data = bytes.slice(offset + 8, offset + 8 + size);
      return { sampleRate, samples: new Int16Array(data.buffer, 0, data.byteLength >> 1) };
    }
    offset += 8 + size + (size & 1);
  }
  throw new Error("WAV file without data");
}

/** ``part`` at ``sampleRate`` (voices can differ), resampled by an OfflineAudioContext. */
export async function resampled(part, sampleRate) {
  if (part.sampleRate === sampleRate || part.samples.length === 0) return part.samples;
  const length = Math.ceil(part.samples.length * sampleRate / part.sampleRate);
  const context = new OfflineAudioContext(1, length, sampleRate);
  const buffer = context.createBuffer(1, part.samples.length, part.sampleRate);
  buffer.getChannelData(0).set(Float32Array.from(part.samples, (sample) => sample / 32768));
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(context.destination);
  source.start();
  const rendered = (await context.startRendering()).getChannelData(0);
  return Int16Array.from(rendered, (sample) =>
    Math.max(-32768, Math.min(32767, Math.round(sample * 32768))));
}

export function wavFile(pcm, sampleRate) {
  const bytes = new Uint8Array(44 + pcm.byteLength);
  const view = new DataView(bytes.buffer);
  const text = (offset, value) => bytes.set([...value].map((c) => c.charCodeAt(0)), offset);
  text(0, "RIFF");
  view.setUint32(4, 36 + pcm.byteLength, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, pcm.byteLength, true);
  const samples = new DataView(bytes.buffer, 44);
  pcm.forEach((sample, index) => samples.setInt16(index * 2, sample, true));
  return bytes;
}
