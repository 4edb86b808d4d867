# TEST AND BENCHMARK HARNESS for the dialogue-tts Ren'Py binding: copied into a
# game by tests/test_renpy.py and benchmarks/renpy_latency.py; not part of the
# binding. Inactive unless DIALOGUE_TTS_HARNESS_REPORT names a file.
#
# The game plays itself with auto-forward at the speed given by
# DIALOGUE_TTS_AFM_TIME (default 0.1: the fastest the preferences slider gives),
# picks menu choices in the order given by DIALOGUE_TTS_CHOICES ("1,0": the
# second choice, then the first), rolls back once when the line
# DIALOGUE_TTS_ROLLBACK_AFTER has been heard, and writes a JSON report when it
# ends: each line as it began (its text with interpolations filled in, and the
# time of its "begin" callback) and each file the voice channel started to play,
# with the time and the binding's text for it, and when Ren'Py's audio thread
# started each file (handed it to the mixer). A thread reads
# renpy.music.get_playing("voice") 200 times a second, and the main thread as
# each interaction starts and 20 times a second. DIALOGUE_TTS_PORT,
# DIALOGUE_TTS_LOOKAHEAD, DIALOGUE_TTS_VOICE_WAIT, DIALOGUE_TTS_VOICE_START_WAIT
# and DIALOGUE_TTS_AUTO_VOICE set the binding's port, its lookahead, how long
# auto-forward waits for a voice on its way, how long an interaction waits for a
# live line's first audio, and config.auto_voice. Each line also records when
# its first frame was drawn ("drawn": when its text shows).

init 100 python in dialogue_tts_harness:

    import json
    import os
    import re
    import sys
    import threading
    import time

    import renpy.store as store

    report_path = os.environ.get("DIALOGUE_TTS_HARNESS_REPORT")
    choices = [int(c) for c in os.environ.get("DIALOGUE_TTS_CHOICES", "").split(",") if c]
    rollback_after = os.environ.get("DIALOGUE_TTS_ROLLBACK_AFTER")
    report = {"lines": [], "played": [], "started": [], "rolled_back": False,
              "finished": False}
    _lock = threading.Lock()
    _current = {"index": -1}

    def write_report():
        with _lock:
            data = json.dumps(report, indent=1)
        with open(report_path, "w") as f:
            f.write(data)

    def exception_handler(short, full, traceback_filename):
        sys.stderr.write(full)
        sys.stderr.flush()
        report["error"] = short
        write_report()
        os._exit(1)

    def character_callback(event, interact=True, **kwargs):
        if event == "begin" and store._last_raw_what:
            now = time.monotonic()
            what = renpy.substitute(store._last_raw_what, translate=False)
            with _lock:
                report["lines"].append({"who": store._last_say_who, "what": what, "begin": now})
                if "trace" in report:
                    report["trace"].append((now, "begin", what))
                _current["index"] = len(report["lines"]) - 1
            if report["rolled_back"]:
                store._preferences.afm_enable = True

    def _voiced_text(playing):
        # The text of the binding's line whose chunk is `playing`, if it is its current one.
        speech = store.dialogue_tts._state.speech
        line = speech and speech._current
        match = re.match(r"dialogue_tts/line-(.+)-\d+\.au$", playing)
        if line is None or match is None or match.group(1) != str(line.line):
            return None
        return line.text

    _playing = {"file": None, "started": None}

    def _started():
        # The file Ren'Py's audio thread has handed to the mixer (renpy.music.get_playing
        # names a file from the moment it is queued on the channel, before that).
        channel = renpy.audio.audio.get_channel("voice")
        if channel._number is None:
            return None
        name = renpy.audio.renpysound.playing_name(channel.number)
        return None if name is None else str(name)

    def check_voice():
        # Records the voice channel's file when it changes. Called by a thread 200 times a
        # second, and on the main thread as each interaction starts and by the periodic
        # callback: a main thread drawing a frame holds the GIL, and the thread waits.
        playing = renpy.music.get_playing(channel="voice")
        playing = None if playing is None else str(playing)
        with _lock:
            changed = playing != _playing["file"]
            _playing["file"] = playing
            if not changed:
                playing = None
            if playing is not None:
                report["played"].append({
                    "line": _current["index"], "file": playing, "t": time.monotonic(),
                    "text": _voiced_text(playing)})
        started = _started()
        with _lock:
            if started != _playing["started"]:
                _playing["started"] = started
                if started is not None:
                    report["started"].append({
                        "line": _current["index"], "file": started, "t": time.monotonic()})

    def watch():
        while True:
            check_voice()
            time.sleep(0.005)

    def periodic():
        check_voice()
        index = _current["index"]
        if index < 0 or report["rolled_back"] or rollback_after is None:
            return
        if report["lines"][index]["what"] != rollback_after:
            return
        heard = any(p["line"] == index for p in report["played"])
        store._preferences.afm_enable = False  # held while we wait to roll back
        speech = store.dialogue_tts._state.speech
        if heard and renpy.music.get_playing("voice") is None and not speech.receiving:
            report["rolled_back"] = True
            renpy.queue_event("rollback")

    def choose(items):
        # Takes the next menu choice (a screen action: runs once, when the timer fires).
        return items[choices.pop(0) if choices else 0].action()

    afm_time = float(os.environ.get("DIALOGUE_TTS_AFM_TIME", "0.1"))

    def label_callback(name, abnormal):
        if report["lines"] and name in ("_main_menu", "main_menu", "start"):
            report["finished"] = True
            write_report()
            renpy.quit(status=0)

    def _trace():
        # Where the time goes: when each first audio event arrives from the server, and
        # when the binding's poll runs (from the periodic callback or as an interaction
        # starts) and plays something.
        import dialogue_tts_client as client

        report["trace"] = trace = []
        feed = client.FrameReader.feed

        def traced_feed(self, data):
            messages = feed(self, data)
            for m in messages:
                if m["type"] in ("say", "started", "queued", "prepared") or (
                        m["type"] == "audio" and m.get("seq") == 0):
                    trace.append((time.monotonic(), "recv " + m["type"], str(m.get("line"))))
            return messages

        client.FrameReader.feed = traced_feed
        binding = store.dialogue_tts

        def traced(original, where):
            def run():
                before = renpy.music.get_playing("voice")
                original()
                after = renpy.music.get_playing("voice")
                if after != before or where == "interact":
                    trace.append((time.monotonic(), where, str(after)))
            return run

        for callbacks, original, where in (
                (renpy.config.periodic_callbacks, binding._periodic, "periodic"),
                (renpy.config.start_interact_callbacks, binding._start_interact, "interact")):
            callbacks[callbacks.index(original)] = traced(original, where)

    def _time_first_frames():
        # Records when each line's first frame has been drawn: "drawn", the time its text
        # shows (an interaction that waits for a voice draws later).
        draw_screen = renpy.display.core.Interface.draw_screen

        def timed(self, *args, **kwargs):
            result = draw_screen(self, *args, **kwargs)
            index = _current["index"]
            if index >= 0 and "drawn" not in report["lines"][index]:
                report["lines"][index]["drawn"] = time.monotonic()
            return result

        renpy.display.core.Interface.draw_screen = timed

    if report_path:
        if os.environ.get("DIALOGUE_TTS_AUTO_VOICE"):
            renpy.config.auto_voice = os.environ["DIALOGUE_TTS_AUTO_VOICE"]
        if os.environ.get("DIALOGUE_TTS_PORT"):
            store.dialogue_tts.port = int(os.environ["DIALOGUE_TTS_PORT"])
        if os.environ.get("DIALOGUE_TTS_LOOKAHEAD"):
            store.dialogue_tts.lookahead = int(os.environ["DIALOGUE_TTS_LOOKAHEAD"])
        if os.environ.get("DIALOGUE_TTS_VOICE_WAIT"):
            store.dialogue_tts.voice_wait = float(os.environ["DIALOGUE_TTS_VOICE_WAIT"])
        if os.environ.get("DIALOGUE_TTS_VOICE_START_WAIT"):
            store.dialogue_tts.voice_start_wait = float(
                os.environ["DIALOGUE_TTS_VOICE_START_WAIT"])
        renpy.config.exception_handler = exception_handler
        renpy.config.all_character_callbacks.append(character_callback)
        renpy.config.periodic_callbacks.append(periodic)
        renpy.config.start_interact_callbacks.append(check_voice)
        renpy.config.label_callback = label_callback
        threading.Thread(target=watch, daemon=True).start()
        _time_first_frames()
        if os.environ.get("DIALOGUE_TTS_HARNESS_TRACE"):
            _trace()

# The choice screen picks by itself, a moment after it shows.
screen choice(items):
    if dialogue_tts_harness.report_path:
        timer 0.3 action Function(dialogue_tts_harness.choose, items)
    vbox:
        for i in items:
            textbutton i.caption action i.action

label splashscreen:
    if dialogue_tts_harness.report_path:
        $ _preferences.afm_enable = True
        $ _preferences.afm_time = dialogue_tts_harness.afm_time
        $ _preferences.wait_voice = True
    return
