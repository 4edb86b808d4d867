"""dialogue-tts: a local text-to-speech server for game dialogue."""

__version__ = "0.1.0"
