"""Command line: ``dialogue-tts serve | say | voices``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import __version__
from .protocol import DEFAULT_HOST, DEFAULT_PORT

_LOGGER = logging.getLogger("dialogue_tts")
_T = TypeVar("_T")

VOICES_ENV = "DIALOGUE_TTS_VOICES"
HOST_ENV = "DIALOGUE_TTS_HOST"
PORT_ENV = "DIALOGUE_TTS_PORT"
WEB_ORIGINS_ENV = "DIALOGUE_TTS_WEB_ORIGINS"
DEFAULT_WEB_PORT = 5758  # the same as websocket.DEFAULT_WEB_PORT, without importing websockets
_PLAYERS = (
    ["aplay", "-q"],
    ["paplay"],
    ["afplay"],
    ["ffplay", "-nodisp", "-autoexit", "-loglevel", "quiet"],
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.command(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as exc:
        print(f"dialogue-tts: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dialogue-tts",
        description="Local neural text-to-speech for game dialogue.",
    )
    parser.add_argument("--version", action="version", version=f"dialogue-tts {__version__}")
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def connection_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--host", default=os.environ.get(HOST_ENV, DEFAULT_HOST))
        command.add_argument(
            "--port", type=int, default=int(os.environ.get(PORT_ENV, DEFAULT_PORT))
        )
        command.add_argument("--unix", type=Path, metavar="PATH", help="Unix socket path")
        command.add_argument(
            "--voices", type=Path, metavar="DIR", default=_env_path(VOICES_ENV),
            help=f"folder of extra Piper voices (*.onnx + *.onnx.json); env {VOICES_ENV}",
        )  # fmt: skip

    serve = commands.add_parser("serve", help="run the server")
    connection_options(serve)
    serve.add_argument(
        "--workers", type=int,
        help="parallel inference calls (default: 2, or 1 on a single core)",
    )  # fmt: skip
    serve.add_argument(
        "--threads", type=int, help="onnxruntime threads per inference call (default: cores)"
    )
    serve.add_argument("--no-pace", action="store_true", help="finish lines when sent, not played")
    serve.add_argument(
        "--allow-remote", action="store_true",
        help="allow --host to be a non-loopback address (anyone on the network can use it)",
    )  # fmt: skip
    serve.add_argument(
        "--web", action="store_true",
        help="also serve WebSocket and the preview page (needs the 'web' extra)",
    )  # fmt: skip
    serve.add_argument(
        "--web-port", type=int, default=DEFAULT_WEB_PORT, metavar="PORT",
        help=f"port of the WebSocket and the preview page (default {DEFAULT_WEB_PORT})",
    )  # fmt: skip
    serve.add_argument(
        "--web-origin", action="append", default=[], metavar="ORIGIN",
        help="a web page origin allowed to use the WebSocket, e.g. http://localhost:8060 "
        f"(repeatable; also env {WEB_ORIGINS_ENV}, space-separated)",
    )  # fmt: skip
    serve.set_defaults(command=_serve)

    say = commands.add_parser(
        "say", help="speak one line (through a running server, else in-process)"
    )
    connection_options(say)
    say.add_argument("text")
    say.add_argument(
        "-o", "--output", type=Path, help="write a .wav or .ogg file instead of playing"
    )
    say.add_argument("--voice", help="voice name (see `dialogue-tts voices`)")
    say.add_argument("--rate", type=float, default=1.0, help="speaking rate, 2.0 = twice as fast")
    say.add_argument("--volume", type=float, default=1.0)
    say.add_argument("--markup", default="plain", choices=["plain", "renpy", "bbcode"])
    say.add_argument("--local", action="store_true", help="never use a running server")
    say.set_defaults(command=_say)

    voices = commands.add_parser("voices", help="list the voices")
    connection_options(voices)
    voices.add_argument("--local", action="store_true", help="never use a running server")
    voices.set_defaults(command=_voices)
    from .renpy_render import add_parser as add_renpy_render

    add_renpy_render(commands)
    return parser


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def run_async(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run on uvloop where it exists (Linux, macOS), plain asyncio elsewhere (Windows)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# --- serve ------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    run_async(_serve_async(args))
    return 0


async def _serve_async(args: argparse.Namespace) -> None:
    from .engine import Engine, VoiceCatalog
    from .server import Server, ServerConfig

    web_origins = (*os.environ.get(WEB_ORIGINS_ENV, "").split(), *args.web_origin)
    if args.web:
        _check_web(web_origins)
    engine = Engine(VoiceCatalog(args.voices), workers=args.workers, intra_op_threads=args.threads)
    config = ServerConfig(
        host=args.host or None, port=args.port, unix_path=args.unix,
        allow_remote=args.allow_remote, pace=not args.no_pace,
        web_port=args.web_port if args.web else None, web_origins=web_origins,
    )  # fmt: skip
    server = Server(engine, config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(signum, stop.set)
    print(f"dialogue-tts listening on {' and '.join(server.addresses)}", flush=True)
    if server.web is not None:
        print(f"preview page: {server.web.url}", flush=True)
    serving = asyncio.create_task(server.serve_forever())
    try:
        await stop.wait()
    finally:
        serving.cancel()
        await server.close()
        engine.close()


def _check_web(origins: Sequence[str]) -> None:
    """Fail before loading the voice if --web cannot work; raises ValueError."""
    try:
        from .websocket import parse_origin
    except ImportError:
        raise ValueError(
            "--web needs the websockets package: pip install 'dialogue-tts[web]'"
        ) from None
    for origin in origins:
        parse_origin(origin)


# --- say and voices ---------------------------------------------------------------------


def _say(args: argparse.Namespace) -> int:
    output: Path | None = args.output
    file_format = "ogg" if output is not None and output.suffix.lower() == ".ogg" else "wav"
    options = {"rate": args.rate, "volume": args.volume, "markup": args.markup}
    if args.voice:
        options["voice"] = args.voice
    data, duration, where = run_async(_render(args, file_format, options))
    if output is None:
        return _play(data, duration)
    output.write_bytes(data)
    print(f"wrote {output} ({duration:.2f} s of speech, {where})")
    return 0


async def _render(
    args: argparse.Namespace, file_format: str, options: dict[str, Any]
) -> tuple[bytes, float, str]:
    from .client import ServerError

    client = None if args.local else await _try_connect(args)
    if client is not None:
        async with client:
            try:
                reply = await client.synthesize(args.text, format=file_format, **options)
            except ServerError as exc:
                raise ValueError(exc.message) from None
            return reply.data, reply.duration, "from the running server"
    return await _render_in_process(args, file_format, options)


async def _render_in_process(
    args: argparse.Namespace, file_format: str, options: dict[str, Any]
) -> tuple[bytes, float, str]:
    from .audio import encode_file
    from .engine import Engine, SynthesisRequest, UnknownVoice, VoiceCatalog
    from .text import prepare

    engine = Engine(VoiceCatalog(args.voices))
    try:
        voice = options.get("voice") or engine.catalog.default_voice
        try:
            engine.catalog.info(voice)
        except UnknownVoice:
            raise ValueError(f"no voice named {voice!r}; try `dialogue-tts voices`") from None
        parts = prepare(args.text, options["markup"])
        if not parts:
            raise ValueError("nothing to say")
        request = SynthesisRequest(
            parts=parts, voice=voice, rate=options["rate"], volume=options["volume"]
        )
        audio, sample_rate = await engine.render(request)
    finally:
        engine.close()
    return encode_file(audio, file_format, sample_rate), len(audio) / sample_rate, "in-process"


async def _try_connect(args: argparse.Namespace) -> Any:
    from .client import Client

    try:
        async with asyncio.timeout(2):
            return await Client.connect(
                args.host, args.port, unix_path=args.unix, client_name="cli"
            )
    except (OSError, TimeoutError):
        return None


def _play(wav: bytes, duration: float) -> int:
    for command in _PLAYERS:
        if shutil.which(command[0]):
            with tempfile.NamedTemporaryFile(suffix=".wav") as file:
                file.write(wav)
                file.flush()
                return subprocess.call([*command, file.name])
    fallback = Path("dialogue-tts-say.wav")
    fallback.write_bytes(wav)
    print(f"no audio player found; wrote {fallback} ({duration:.2f} s)")
    return 0


def _voices(args: argparse.Namespace) -> int:
    voices = run_async(_list_voices(args))
    print(f"{'NAME':32} {'LANGUAGE':10} {'RATE':>6}  SPEAKERS")
    for voice in voices:
        speakers = ", ".join(voice["speakers"]) or "-"
        print(f"{voice['name']:32} {voice['language']:10} {voice['sample_rate']:>6}  {speakers}")
    return 0


async def _list_voices(args: argparse.Namespace) -> list[dict[str, Any]]:
    client = None if args.local else await _try_connect(args)
    if client is not None:
        async with client:
            return await client.voices()
    from .engine import VoiceCatalog

    return [info.to_dict() for info in VoiceCatalog(args.voices).infos()]
