// An AudioWorklet that passes audio through and counts the samples of sound that reach it:
// the page's proof that speech got into the Web Audio graph (exposed for tests).

class SampleTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.heardSamples = 0;
    this.peak = 0;
    this.quantaSinceReport = 0;
  }

  process(inputs, outputs) {
    const input = inputs[0];
    const output = outputs[0];
    if (input.length > 0) {
      const samples = input[0];
      for (let index = 0; index < samples.length; index += 1) {
        const level = Math.abs(samples[index]);
        if (level > 0) this.heardSamples += 1;
        if (level > this.peak) this.peak = level;
      }
      for (let channel = 0; channel < output.length; channel += 1) {
        output[channel].set(input[Math.min(channel, input.length - 1)]);
      }
    }
    this.quantaSinceReport += 1;
    if (this.quantaSinceReport >= 32) { // about every 0.1 s at 44.1 or 48 kHz
      this.quantaSinceReport = 0;
      this.port.postMessage({ heardSamples: this.heardSamples, peak: this.peak });
    }
    return true;
  }
}

registerProcessor("sample-tap", SampleTap);
