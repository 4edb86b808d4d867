# TEST HARNESS - used only by tests/test_renpy.py, inactive otherwise.
#
# When DIALOGUE_TTS_TEST_REPORT names a file, the game plays itself: auto-forward
# is on, a click is simulated in the middle of the long line and another while
# Eileen's bread line is being revealed, one rollback is made at the last line,
# and a JSON report of what the voice channel played and of what Eileen's
# reveal_say text showed is written to that file when the game ends. An
# exception prints its traceback and quits with status 1. DIALOGUE_TTS_PORT, if
# set, is the server's port; DIALOGUE_TTS_LOOKAHEAD, if set, the binding's
# lookahead; DIALOGUE_TTS_AUTO_VOICE, if set, becomes config.auto_voice.

init 100 python in dialogue_tts_test:

    import json
    import os
    import sys
    import time

    import renpy.store as store

    report_path = os.environ.get("DIALOGUE_TTS_TEST_REPORT")
    report = {"lines": [], "played": [], "clicked": None, "rolled_back": False, "finished": False,
              "reveals": [], "reveal_clicked": None}
    _state = {"line": -1, "playing": None, "voice_started": (None, 0.0), "reveal": None}

    def write_report():
        with open(report_path, "w") as f:
            json.dump(report, f, indent=1)

    def exception_handler(short, full, traceback_filename):
        sys.stderr.write(full)
        sys.stderr.flush()
        report["error"] = short
        write_report()
        os._exit(1)

    def character_callback(event, interact=True, **kwargs):
        if event == "begin" and store._last_raw_what:
            report["lines"].append({"who": store._last_say_who, "what": store._last_raw_what})
            _state["line"] = len(report["lines"]) - 1
            if report["rolled_back"]:
                store._preferences.afm_enable = True  # held for the rollback, see periodic()
            write_report()

    def periodic():
        playing = renpy.music.get_playing(channel="voice")
        now = time.monotonic()
        if playing != _state["playing"]:
            _state["playing"] = playing
            if playing is not None:
                report["played"].append({"line": _state["line"], "file": str(playing), "t": now})
                write_report()
        line = _state["line"]
        if line < 0:
            return
        what = report["lines"][line]["what"]
        # A player's click in the middle of the long line: after a second of its speech.
        heard = [p for p in report["played"] if p["line"] == line]
        if heard and _state["voice_started"][0] != line:
            _state["voice_started"] = (line, now)
        # What reveal_say shows: (text, characters shown, or None when nothing is held back).
        reveal = store.dialogue_tts._state.reveal
        if reveal != _state["reveal"]:
            _state["reveal"] = reveal
            if reveal is not None:
                report["reveals"].append({"line": line, "text": reveal[0], "shown": reveal[1],
                                          "playing": playing and str(playing), "t": now})
        # A click while Eileen's bread line is voiced and not all revealed: all of it shows
        # at once (and her voice goes on).
        if (report["reveal_clicked"] is None and what.startswith("There is always bread")
                and heard and playing and reveal is not None and reveal[1] is not None):
            report["reveal_clicked"] = line
            renpy.queue_event("dismiss")
        if (report["clicked"] is None and what.startswith("The road was cold") and playing
                and now - _state["voice_started"][1] > 1.0):
            report["clicked"] = line
            renpy.queue_event("dismiss")
        # One rollback, once the last line has been heard to the end (and, when the server
        # voiced it, has finished there, so that it is in the binding's cache). Auto-forward
        # waits for it: for so short a line, its delay ends about when the voice does, and it
        # would win the race. The line said again after the rollback turns it back on.
        if what == "Sit down. Eat." and heard and not report["rolled_back"]:
            store._preferences.afm_enable = False
        speech = store.dialogue_tts._state.speech
        if (not report["rolled_back"] and what == "Sit down. Eat." and heard and playing is None
                and (speech is None or not speech.receiving)):
            report["rolled_back"] = True
            renpy.queue_event("rollback")

    def label_callback(name, abnormal):
        # The game is over when start returns to the main menu (or starts again).
        if report["lines"] and name in ("_main_menu", "main_menu", "start"):
            report["finished"] = True
            write_report()
            renpy.quit(status=0)

    if report_path:
        if os.environ.get("DIALOGUE_TTS_AUTO_VOICE"):  # e.g. "voice/{id}.ogg"
            renpy.config.auto_voice = os.environ["DIALOGUE_TTS_AUTO_VOICE"]
        if os.environ.get("DIALOGUE_TTS_PORT"):
            store.dialogue_tts.port = int(os.environ["DIALOGUE_TTS_PORT"])
        if os.environ.get("DIALOGUE_TTS_LOOKAHEAD"):
            store.dialogue_tts.lookahead = int(os.environ["DIALOGUE_TTS_LOOKAHEAD"])
        renpy.config.exception_handler = exception_handler
        renpy.config.all_character_callbacks.append(character_callback)
        renpy.config.periodic_callbacks.append(periodic)
        renpy.config.label_callback = label_callback


label splashscreen:
    if dialogue_tts_test.report_path:
        $ _preferences.afm_enable = True
        $ _preferences.afm_time = 10
        $ _preferences.wait_voice = True
        $ _preferences.afm_after_click = True  # a click advances; auto-forward goes on
    return
