"""Command line: ``dialogue-tts serve | say | voices | cast | preview | renpy-render | words |
bundle``.

Most imports here are inside the functions that need them, for start-up time only: the
engine loads ONNX Runtime and NumPy, which ``--help`` and a client of a running server never
use. No import is placed there to break a loop (tests/test_layers.py checks the graph).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import __version__
from .app import (
    HOST_ENV,
    PORT_ENV,
    TOKEN_ENV,
    WEB_ORIGINS_ENV,
    build_engine,
    engine_options,
    load_cast_option,
    play_file,
    player,
    read_token,
    run_async,
)
from .protocol import DEFAULT_HOST, DEFAULT_PORT

_LOGGER = logging.getLogger("dialogue_tts")
_T = TypeVar("_T")

DEFAULT_WEB_PORT = 5758  # the same as websocket.DEFAULT_WEB_PORT, without importing websockets


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
            "--token-file", type=Path, metavar="FILE",
            help=f"file holding the server's shared secret (else env {TOKEN_ENV}, if set)",
        )  # fmt: skip
        engine_options(command)

    serve = commands.add_parser("serve", help="run the server")
    connection_options(serve)
    serve.add_argument(
        "--workers", type=int,
        help="fixed number of inference calls at once (default: chosen per call from the "
        "work waiting: one call with every core for a lone line, one call per core when "
        "many wait)",
    )  # fmt: skip
    serve.add_argument(
        "--threads", type=int,
        help="fixed onnxruntime threads per inference call (default: chosen per call)",
    )  # fmt: skip
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
    serve.add_argument(
        "--parent-pid", type=int, metavar="PID",
        help="exit when process PID ends (the game that started this server), a crash included",
    )  # fmt: skip
    serve.add_argument(
        "--exit-with-stdin", action="store_true",
        help="exit when standard input ends (the process that started this server is gone)",
    )  # fmt: skip
    serve.add_argument(
        "--port-file", type=Path, metavar="FILE",
        help="once listening, write the TCP port to FILE (for a game that cannot read this "
        "server's output; written whole or not at all)",
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
    say.add_argument("--speaker", help="a speaker of the cast file (its voice and settings)")
    say.add_argument("--style", help="a style of the cast file, e.g. angry or whisper")
    say.add_argument("--voice", help="voice name (see `dialogue-tts voices`)")
    say.add_argument("--rate", type=float, default=1.0, help="speaking rate, 2.0 = twice as fast")
    say.add_argument("--pitch", type=float, default=1.0, help="pitch, 1.2 = higher (0.5 to 2)")
    say.add_argument("--volume", type=float, default=1.0)
    say.add_argument("--sample-rate", type=int, help="resample to this rate, e.g. 48000")
    say.add_argument("--markup", default="plain", choices=["plain", "renpy", "bbcode"])
    say.add_argument("--local", action="store_true", help="never use a running server")
    say.set_defaults(command=_say)

    voices = commands.add_parser("voices", help="list the voices")
    connection_options(voices)
    voices.add_argument("--local", action="store_true", help="never use a running server")
    voices.set_defaults(command=_voices)

    cast = commands.add_parser("cast", help="check a cast file and show what it resolves to")
    engine_options(cast)
    cast.set_defaults(command=_show_cast)

    from .bundle import add_parser as add_bundle
    from .preview import add_parser as add_preview
    from .renpy_render import add_parser as add_renpy_render
    from .words import add_parser as add_words

    add_preview(commands)
    add_renpy_render(commands)
    add_bundle(commands)
    add_words(commands)
    return parser


# --- serve ------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    run_async(_serve_async(args))
    return 0


async def _serve_async(args: argparse.Namespace) -> None:
    from .server import Server, ServerConfig

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    _watch_lifetime(args, lambda: loop.call_soon_threadsafe(stop.set))
    web_origins = (*os.environ.get(WEB_ORIGINS_ENV, "").split(), *args.web_origin)
    if args.web:
        _check_web(web_origins)
    if args.port_file is not None:
        _check_port_file(args.port_file, args.unix)
    async with build_engine(args, workers=args.workers, threads=args.threads) as engine:
        config = ServerConfig(
            host=args.host or None, port=args.port, unix_path=args.unix,
            allow_remote=args.allow_remote, pace=not args.no_pace,
            web_port=args.web_port if args.web else None, web_origins=web_origins,
            cast=load_cast_option(args, engine.catalog), token=read_token(args),
        )  # fmt: skip
        server = Server(engine, config)
        await server.start()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(signum, stop.set)
        print(f"dialogue-tts listening on {' and '.join(server.addresses)}", flush=True)
        if args.port_file is not None:
            _write_port_file(args.port_file, server.port)
        if config.token is not None:
            print("clients must send the token (from --token-file or $DIALOGUE_TTS_TOKEN)")
        if server.web is not None:
            print(f"preview page: {server.web.page_url(config.token)}", flush=True)
        serving = asyncio.create_task(server.serve_forever())
        try:
            await stop.wait()
        finally:
            serving.cancel()
            await asyncio.wait([serving])
            await server.close()


def _watch_lifetime(args: argparse.Namespace, stop: Callable[[], None]) -> None:
    """--parent-pid and --exit-with-stdin: call ``stop`` when the game is gone. Watched from
    the start, so a game that dies while the voice loads leaves no server behind."""
    from .lifetime import watch_parent, watch_stdin

    if args.parent_pid is not None:
        watch_parent(args.parent_pid, stop)
    if args.exit_with_stdin:
        watch_stdin(stop)


def _check_port_file(path: Path, unix: Path | None) -> None:
    """Fail before loading the voice if --port-file cannot be written; raises ValueError."""
    if unix is not None:
        raise ValueError("--port-file: a server on a Unix socket (--unix) has no TCP port")
    if not path.parent.is_dir():
        raise ValueError(f"--port-file {path}: no such folder {path.parent}")


def _write_port_file(path: Path, port: int | None) -> None:
    """--port-file: the port, written to a temporary file beside ``path`` and renamed onto
    it, so that a game polling for ``path`` never reads it half written."""
    assert port is not None, "checked by _check_port_file"
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(f"{port}\n", encoding="ascii")
    os.replace(partial, path)


def _check_web(origins: Sequence[str]) -> None:
    """Fail before loading the voice if --web cannot work; raises ValueError."""
    try:
        from .websocket import parse_origin
    except ImportError:
        if getattr(sys, "frozen", False):  # a bundle (dialogue-tts bundle)
            raise ValueError("--web: this bundle was built without --web") from None
        raise ValueError(
            "--web needs the websockets package: pip install 'dialogue-tts[web]'"
        ) from None
    for origin in origins:
        parse_origin(origin)


# --- say and voices ---------------------------------------------------------------------


def _say(args: argparse.Namespace) -> int:
    from .audio import FILE_FORMATS

    output: Path | None = args.output
    suffix = output.suffix.lower().lstrip(".") if output is not None else ""
    file_format = suffix or "wav"  # no suffix (e.g. /dev/stdout): WAV
    if file_format not in FILE_FORMATS:
        raise ValueError(f"cannot write {file_format!r} files; use .wav, .ogg or .flac")
    options = {
        "rate": args.rate, "pitch": args.pitch, "volume": args.volume, "markup": args.markup,
        "voice": args.voice, "speaker": args.speaker, "style": args.style,
        "sample_rate": args.sample_rate,
    }  # fmt: skip
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
    from .messages import InvalidMessage, Synthesize

    try:
        request = Synthesize(text=args.text, format=file_format, **options)
        request.check()
    except InvalidMessage as exc:
        raise ValueError(str(exc)) from None
    client = None if args.local else await _try_connect(args)
    if client is not None:
        async with client:
            try:
                reply = await client.request(request)
            except ServerError as exc:
                raise ValueError(exc.message) from None
            return reply.data, reply.duration, "from the running server"
    return await _render_in_process(args, request)


async def _render_in_process(args: argparse.Namespace, request: Any) -> tuple[bytes, float, str]:
    from .errors import RemoteProtocolError
    from .jobs import DEFAULT_LIMITS, render_file, synthesis_request

    async with build_engine(args) as engine:
        cast = load_cast_option(args, engine.catalog)
        try:
            job, _ = synthesis_request(request, cast, engine.catalog, DEFAULT_LIMITS)
        except RemoteProtocolError as exc:
            raise ValueError(exc.message) from None
        rendered = await render_file(engine, job, request.format)
    return rendered.data, rendered.duration, "in-process"


async def _try_connect(args: argparse.Namespace) -> Any:
    """A client of the running server, with the cast file if one was given; else None."""
    from .client import Client, ServerError

    cast = args.cast.read_text(encoding="utf-8") if args.cast is not None else None
    try:
        async with asyncio.timeout(2):
            return await Client.connect(
                args.host, args.port, unix_path=args.unix, client_name="cli",
                token=read_token(args), cast=cast,
            )  # fmt: skip
    except (OSError, TimeoutError):
        return None
    except ServerError as exc:  # e.g. unauthorized: say so rather than render behind its back
        raise ValueError(f"the running server refused us: {exc.message} ({exc.code})") from None


def _play(wav: bytes, duration: float) -> int:
    if player() is not None:
        with tempfile.NamedTemporaryFile(suffix=".wav") as file:
            file.write(wav)
            file.flush()
            return play_file(Path(file.name))
    fallback = Path("dialogue-tts-say.wav")
    fallback.write_bytes(wav)
    print(f"no audio player found; wrote {fallback} ({duration:.2f} s)")
    return 0


def _voices(args: argparse.Namespace) -> int:
    voices = run_async(_list_voices(args))
    print(f"{'NAME':32} {'FAMILY':7} {'LANGUAGE':9} {'GENDER':7} {'RATE':>6}  SPEAKERS")
    for voice in voices:
        speakers = ", ".join(voice["speakers"]) or "-"
        family, gender = voice.get("family", "piper"), voice.get("gender") or "-"
        print(
            f"{voice['name']:32} {family:7} {voice['language']:9} {gender:7} "
            f"{voice['sample_rate']:>6}  {speakers}"
        )
    return 0


def _show_cast(args: argparse.Namespace) -> int:
    import json

    from .engine import VoiceCatalog

    cast = load_cast_option(args, VoiceCatalog(args.voices))
    print(json.dumps(cast.to_dict(), indent=2, ensure_ascii=False))
    return 0


async def _list_voices(args: argparse.Namespace) -> list[dict[str, Any]]:
    client = None if args.local else await _try_connect(args)
    if client is not None:
        async with client:
            return await client.voices()
    from .engine import VoiceCatalog

    return [info.to_dict() for info in VoiceCatalog(args.voices).infos()]
