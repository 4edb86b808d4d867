"""A game-loop-style dialogue-tts client: voice a short scene, skip a line, save the audio.

Start a server first (`dialogue-tts serve`), then: `python examples/python/game_loop.py`.
A real game would hand each audio chunk to its mixer; here every line is written to a WAV
file in ./scene-audio/ so you can listen to what the game would have played.

The loop runs at 60 "frames" per second and never waits on the server: lines are queued
with say(), and each frame drains whatever events have arrived, as a game engine would.
"""

from __future__ import annotations

import argparse
import asyncio
import wave
from pathlib import Path

from dialogue_tts.client import Client, LineHandle
from dialogue_tts.messages import Audio, Finished, Started

SCENE = [
    ("innkeeper", "You look tired, friend. Sit down, sit down."),
    ("traveler", "Thank you. Is there any news from the north road?"),
    ("innkeeper", "The bridge fell last night, so nobody has come through since the storm."),
    ("traveler", "Then I will take the mountain pass."),
]
FRAME = 1 / 60


async def play_scene(port: int, out_dir: Path) -> None:
    async with await Client.connect(port=port, client_name="game-loop-example") as client:
        # Queue the whole scene up front: each character's lines play in order, and a line
        # starts when the previous one of the same character would have finished playing.
        lines: list[LineHandle] = [await client.say(who, text) for who, text in SCENE]
        playing = {line.line: line for line in lines}
        files: dict[object, wave.Wave_write] = {}
        rates: dict[object, int] = {}
        frame = 0
        while playing:
            frame += 1
            for line_id, line in list(playing.items()):
                for event in line.poll():  # what has arrived for this line; never blocks
                    if isinstance(event, Started):
                        print(f"frame {frame:4}: {event.speaker} starts line {line_id}")
                        rates[line_id] = event.sample_rate
                        path = out_dir / f"line-{line_id}.wav"
                        files[line_id] = wave.open(str(path), "wb")  # noqa: SIM115 (closed at finished)
                        files[line_id].setparams((1, 2, event.sample_rate, 0, "NONE", ""))
                    elif isinstance(event, Audio):
                        files[line_id].writeframes(event.data)  # a game: feed its mixer
                    elif isinstance(event, Finished):
                        seconds = event.samples / rates[line_id]
                        print(f"frame {frame:4}: line {line_id} {event.status} ({seconds:.1f} s)")
                        files.pop(line_id).close()
                        del playing[line_id]
            if frame == 90:  # 1.5 s in, the player presses "skip" on the innkeeper
                skipped = await client.skip("innkeeper")
                print(f"frame {frame:4}: player skipped the innkeeper (line {skipped.line})")
            await asyncio.sleep(FRAME)
    print(f"wrote {len(SCENE)} files to {out_dir}/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5757)
    parser.add_argument("--out", type=Path, default=Path("scene-audio"))
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    asyncio.run(play_scene(args.port, args.out))


if __name__ == "__main__":
    main()
