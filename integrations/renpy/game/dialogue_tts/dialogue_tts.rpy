# dialogue-tts for Ren'Py: every line of dialogue is spoken by a local neural voice.
#
# Copy this folder (dialogue_tts/, with dialogue_tts_client.py) into your game/
# folder and run the server on the same machine:
#
#     dialogue-tts serve
#
# That is all: each say statement is sent to the server as it begins, and the
# speech plays on the "voice" channel, so the voice volume slider, mute and
# voice_tag controls (ToggleVoiceMute, SetCharacterVolume) keep working. A new
# line stops the previous one, as with voice files, and when the player
# advances or skips, the server stops synthesizing at once. Lines that have a
# voice file (the voice statement, or config.auto_voice) play the file instead.
# Without a server the game runs silently and says so once in log.txt.
#
# While a line is shown, the next lines on the script's path (2; set
# dialogue_tts.lookahead) are prepared by the server and fetched, so that each
# starts with its interaction as a voice file does; auto-forward waits for a
# voice that is on its way. A line said live (one the lookahead could not know)
# holds its text back until its voice starts, a fraction of a second at most
# (dialogue_tts.voice_start_wait), so that the two start together.
#
# Give characters their own voices with dialogue_tts.voices, keyed by the
# character's voice_tag or variable name (settings are listed below):
#
#     define e = Character("Eileen", voice_tag="eileen")
#
#     define dialogue_tts.voices = {
#         "eileen": {"voice": "en_US-joe-medium", "rate": 1.1, "pitch": 1.1},
#         "guard": {"style": "stern"},
#         "ghost": None,      # never voiced
#     }
#
# A style names one of the cast's styles: the game can ship its own cast
# (define dialogue_tts.cast_file = "cast.toml"), or use the server's. One line
# picks a style with a say argument (cb_ arguments go to character callbacks);
# cb_tts_style in Character() gives a character a style for all its lines:
#
#     e "Get out!" (cb_tts_style="angry")
#
# To ship the voice with the game, build the server into a folder that needs no
# Python (`dialogue-tts bundle dialogue-tts-server`), put it beside game/, and
# name it: the game then starts it on the first line and stops it when it quits.
#
#     define dialogue_tts.server_path = "dialogue-tts-server/dialogue-tts-server"
#
# The voice takes a few seconds to load: call dialogue_tts.start_server() early
# (in label splashscreen, say) so that it is ready for the first line, and wait
# while dialogue_tts.server_starting() if the first line must be voiced.
#
# A server started with a token (DIALOGUE_TTS_TOKEN or --token-file) needs it:
# the binding reads the DIALOGUE_TTS_TOKEN environment variable by itself, or
# define dialogue_tts.token.
#
# Text in time with the voice (opt-in, per character): with this show_function,
# a character's dialogue appears word by word as the voice says it, instead of
# at the text speed. A click shows all of it at once, as with slow text; when
# the line is not voiced (no server, a muted voice), it shows as usual.
#
#     define e = Character("Eileen", voice_tag="eileen",
#                          show_function=dialogue_tts.reveal_say)
#
# From Python, dialogue_tts.say("eileen", "Hello.") speaks a line and
# dialogue_tts.skip() stops it; the DialogueTTSSkip() screen action does the
# same from a button.

init -100 python in dialogue_tts:

    # Settings. Change them with define statements in your own script, for
    # example: define dialogue_tts.port = 6000

    # False turns voicing off.
    enabled = True

    # Where the server listens (loopback only: nothing else on the network should
    # be able to speak for your game).
    host = "127.0.0.1"
    port = 5757

    # The bundled server to start (`dialogue-tts bundle`), relative to the game's
    # base folder (config.basedir, which holds game/), e.g.
    # "dialogue-tts-server/dialogue-tts-server" (".exe" is added on Windows). The
    # game starts it on the first line, with a fresh token, and host, port and
    # token are not used. None: connect to a server already running.
    server_path = None

    # The server's shared secret, if it was started with one. None reads the
    # DIALOGUE_TTS_TOKEN environment variable when the game connects.
    token = None

    # The game's cast, sent when the game connects; it replaces the server's own
    # cast (its --cast file) for this game. A dict shaped like a cast file, e.g.
    # {"speakers": {"eileen": {"pitch": 1.1, "styles": {"angry": {"rate": 1.2}}}}},
    # or TOML text. None: the server's cast.
    cast = None

    # A cast file (TOML) in the game, read with renpy.open_file when the game
    # connects, e.g. "cast.toml"; used instead of cast.
    cast_file = None

    # Per-character settings, keyed by voice_tag or by the character's variable
    # name: {"voice": name, "style": name, "rate": 1.0, "pitch": 1.0,
    # "volume": 1.0}, every key optional (see `dialogue-tts voices` and the
    # cast). None means that character is never voiced.
    voices = { }

    # Settings for characters not in voices ({ } = the server's default voice);
    # None voices only the characters listed in voices.
    default = { }

    # Settings for narration (say statements without a character); None keeps
    # narration silent.
    narrator = None

    # Lookahead: while a line is shown, the server prepares the next ones on the
    # path ahead, so that they start as soon as the player reaches them. How many
    # lines ahead (0 turns it off), and how many choices of a menu (or branches
    # of an if) to prepare the first line of.
    lookahead = 2
    lookahead_choices = 3

    # A line said live (not prepared: the first line, or one the lookahead could
    # not know) is synthesized as it begins. Its interaction waits for its first
    # audio, at most this many seconds, before drawing the line: the text then
    # shows with its voice, as with a voice file, rather than the voice following
    # it. 0 never waits (the voice follows the text). Prepared lines never wait.
    voice_start_wait = 0.3

    # Auto-forward waits for a line's voice while it is on its way (sent, its
    # audio not yet playing), as it waits for a voice file that plays, when the
    # "wait for voice" preference is on; at most this many seconds.
    voice_wait = 5.0

    import ast
    import os

    import renpy.store as store
    from store import Action, DictEquality, NoRollback

    renpy.add_python_directory("dialogue_tts")
    import dialogue_tts_client as client

    class _State(NoRollback):
        """Holds the connection: created at init, never saved, never rolled back."""

        speech = None
        server = None  # the bundled server (server_path), once started
        volume = 1.0
        # (text, characters shown) of the last reveal_say text drawn; characters
        # shown is None when nothing is held back. For tests and debugging.
        reveal = None

    _state = _State()

    def _speech():
        # Connect lazily, on the first line: lint and compile run init code.
        if _state.speech is None:

            def connect():
                secret = token if token is not None else os.environ.get("DIALOGUE_TTS_TOKEN")
                connection = client.Connection(
                    host, port, client_name="renpy", token=secret, cast=_cast(),
                    server=_server())
                return connection.start(renpy.invoke_in_thread)

            _state.speech = client.Speech(
                connect, log=_log, lookahead=lookahead, hold_seconds=voice_wait)
        return _state.speech

    # --- the bundled server (server_path) ---

    def _server():
        # The bundled server, started on the first call (the first line); None without one.
        if server_path is None:
            return None
        if _state.server is None:
            path = os.path.join(renpy.config.basedir, server_path)
            if renpy.windows and not path.lower().endswith(".exe"):
                path += ".exe"
            _state.server = client.ServerProcess(path, log=_log).start()
        return _state.server

    def start_server():
        """
        Starts the bundled server (server_path) now rather than on the first line,
        e.g. in label splashscreen: the voice loads in a few seconds, and a first
        line that comes before it is ready is not voiced. Does nothing without
        server_path, or once the server was started.
        """

        _server()

    def server_starting():
        """
        True while the bundled server is starting: it has been started and is
        neither listening nor failed yet. A splash screen can wait for it:

            $ dialogue_tts.start_server()
            while dialogue_tts.server_starting():
                $ renpy.pause(0.1, hard=True)
        """

        return _state.server is not None and _state.server.starting

    def _stop_server():
        # In config.quit_callbacks: the game quits, its server goes with it. (A crash or a
        # kill leaves no server either: the server watches the game's process id.)
        if _state.server is not None:
            _state.server.stop()

    renpy.config.quit_callbacks.append(_stop_server)

    def _cast():
        # Read when the game connects, on its first line: never at init.
        if cast_file is None:
            return cast
        try:
            with renpy.open_file(cast_file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            _log("dialogue-tts: cannot read %s (%s); using the server's cast" % (cast_file, e))
            return None

    def _log(message):
        print(message)  # Ren'Py copies standard output into log.txt

    def _settings(who):
        """The voice settings of a say statement's `who`, and the speaker and voice tag to
        use, or None when the line is not voiced."""

        if who is None:
            return (narrator, "narrator", None) if narrator is not None else None
        character = renpy.ast.eval_who(who)
        tag = getattr(character, "voice_tag", None)
        for key in (tag, who):
            if key is not None and key in voices:
                settings = voices[key]
                return (settings, tag or who, tag) if settings is not None else None
        return (default, tag or who, tag) if default is not None else None

    def say(speaker, text, voice=None, rate=None, volume=None, tag=None, style=None, pitch=None,
            reveal=False):
        """
        Speaks `text` as `speaker` on the voice channel, stopping the line
        being spoken. `voice`, `style`, `rate`, `pitch` and `volume` are the
        server's voice name, a style of the cast, speaking rate (1.0 normal),
        pitch (0.5 to 2.0, 1.0 normal) and gain; None uses the cast's or the
        server's defaults. `tag` is a voice tag: nothing is said when the player
        muted it. `reveal` asks for the word timings that reveal_say uses.
        Returns "cached", "sent" or "offline".
        """

        volume_setting = _tag_volume(tag)
        if not enabled or not volume_setting:
            skip()
            return "offline"
        _state.volume = volume_setting
        return _speech().say(
            speaker, text, voice=voice, rate=rate, volume=volume, style=style, pitch=pitch,
            reveal=reveal)

    def _tag_volume(tag):
        # The player's volume for a voice tag (SetCharacterVolume); 0 when muted.
        if tag in store.persistent._voice_mute:
            return 0.0
        return store.persistent._character_volume.get(tag, 1.0)

    def skip():
        """
        Stops the line being spoken and tells the server at once, so that it
        stops synthesizing. Returns True if a line was stopped.
        """

        if _state.speech is None:
            return False
        return _state.speech.skip()

    @renpy.pure
    class DialogueTTSSkip(Action, DictEquality):
        """
        A screen action that stops the line being spoken.
        """

        def __call__(self):
            skip()

    # Screens use it like Ren'Py's own actions: textbutton "Stop" action DialogueTTSSkip()
    store.DialogueTTSSkip = DialogueTTSSkip
    renpy.pure("DialogueTTSSkip")

    def character_callback(event, interact=True, type="say", tts_style=None, **kwargs):
        """
        In config.all_character_callbacks: voices each say statement as it
        begins and skips it when the player moves on. `tts_style` comes from
        a cb_tts_style argument of the character or of the say statement.
        """

        if event == "begin":
            _begin(tts_style)
        elif event == "end" and interact and not store._preferences.voice_sustain:
            skip()

    def _begin(style):
        # Ren'Py 8.0 gives callbacks no what=: the say statement being run leaves its
        # text in _last_raw_what (lines said from Python leave it empty: not voiced).
        what = store._last_raw_what
        if not what or renpy.config.skipping or store._voice.play:
            skip()  # skipping, or the line has its own voice file
            _drop_lookahead()
            return
        identifier = renpy.game.context().translate_identifier
        line = _voiced_line(store._last_say_who, what, style, identifier)
        if line is None:
            skip()
        else:
            say(**line)
        _look_ahead()

    def _voiced_line(who, what, style, identifier):
        # say()'s arguments for a say statement's line (what: its text before
        # [interpolations] are filled in), or None when it is not voiced: the live line
        # and the lookahead both come here, so that a prepared line is the one said.
        found = _settings(who)
        if found is None or _has_auto_voice(identifier):
            return None
        settings, speaker, tag = found
        if style is not None:
            settings = dict(settings, style=style)  # the line's style wins
        text = renpy.substitute(what, translate=False)  # fills in [interpolations]
        return dict(settings, speaker=speaker, text=text, tag=tag, reveal=_reveals(who))

    def _look_ahead():
        # Runs once per line, as it begins: never per frame, and never waits.
        speech = _state.speech
        if speech is None or not lookahead or not enabled:
            return
        context = renpy.game.context()
        try:
            node = renpy.game.script.lookup(context.current)
        except Exception:
            return  # not in the script (a replay, an unusual context)
        if type(node).__name__ != "Say":
            return  # a line said from Python: its place in the script is unknown
        lines = []
        ahead = client.walk_ahead(
            node.next, renpy.game.script.lookup, lookahead, lookahead_choices)
        for say_node, identifier in ahead:
            line = _line_ahead(say_node, identifier)
            if line is not None and _tag_volume(line.pop("tag")):
                lines.append(line)
        speech.look_ahead(lines)

    def _drop_lookahead():
        if _state.speech is not None:
            _state.speech.drop_lookahead()

    def _line_ahead(node, identifier):
        # The line a say statement ahead will say, as known now, or None: not voiced,
        # or something about it cannot be known before it runs.
        what = node.what
        if renpy.config.say_menu_text_filter:
            what = renpy.config.say_menu_text_filter(what)
        try:
            style = _style_ahead(node)
            return _voiced_line(node.who, what, style, identifier)
        except Exception:
            # An undefined variable (set by the time the line runs), a character made
            # later, a style given by an expression: the live say voices this one.
            return None

    def _style_ahead(node):
        # The tts style of a say statement: its cb_tts_style argument (a literal: an
        # expression could mean anything by then), else its character's.
        for name, expression in (node.arguments.arguments if node.arguments else ()):
            if name == "cb_tts_style":
                return ast.literal_eval(expression)
        who = node.who
        character = store.narrator if who is None else renpy.ast.eval_who(who)
        return getattr(character, "cb_args", {}).get("tts_style")

    def _reveals(who):
        # True when the speaking character's show_function is reveal_say.
        character = store.narrator if who is None else renpy.ast.eval_who(who)
        return getattr(character, "show_function", None) is reveal_say

    def reveal_say(who, what, **kwargs):
        """
        A show_function for Character: shows dialogue as renpy.show_display_say
        does, and while the line is voiced, reveals its text word by word as the
        voice says it. Opt in per character:

            define e = Character("Eileen", show_function=dialogue_tts.reveal_say)
        """

        shown = renpy.show_display_say(who, what, **kwargs)
        widget = renpy.get_widget(*shown) if isinstance(shown, tuple) else shown
        if type(widget) is renpy.text.text.Text:
            widget.__class__ = _RevealText  # the same Text, drawn by the voice
        return shown

    class _RevealText(renpy.text.text.Text):
        """
        The what text of reveal_say. While its line is voiced, it is in slow
        mode as Ren'Py's text speed would have it, but shows as much as the
        voice has said (drawn by a second Text whose hidden part is transparent,
        so nothing moves); when the voice is past its last word, or a click ends
        slow mode, it is a plain Text again.
        """

        def render(self, width, height, st, at):
            shown, wait = _revealed(self)
            if shown is None:
                return renpy.text.text.Text.render(self, width, height, st, at)
            renpy.display.render.redraw(self, wait)  # when the voice reaches the next word
            if getattr(self, "_reveal_shown", None) != shown:
                markup = client.hide_after(
                    self.text[0], shown, renpy.config.self_closing_custom_text_tags)
                if getattr(self, "_reveal_text", None) is not None:
                    self._reveal_text.kill_layout()  # one layout cached per word, else
                self._reveal_text = renpy.text.text.Text(markup, slow=False, substitute=False)
                self._reveal_text.style = self.style  # this text's own style, as built
                self._reveal_shown = shown
            return renpy.display.render.render(self._reveal_text, width, height, st, at)

    def _revealed(widget):
        # How much of a reveal_say text to show now (None: as Ren'Py would show it), and
        # in how many seconds to look again.
        text = widget.text[0] if widget.text else None
        if not isinstance(text, str):
            return None, None
        shown = wait = None
        speech = _state.speech
        if widget.slow and speech is not None and not store._preferences.get_mute("voice"):
            playing = renpy.music.get_playing("voice")
            seconds = renpy.music.get_pos("voice") if playing else None
            shown = speech.reveal(text, playing, seconds)
            wait = speech.reveal_wait(playing, seconds)
        if shown is not None:
            start = widget.start or 0
            end = len(text) if widget.end is None else widget.end
            if shown >= end:
                # The voice has said this much ({w} ends a part): slow text is done.
                _end_slow(widget)
                shown = None
            else:
                shown = max(shown, start)
        _state.reveal = (text, shown)
        return shown, wait

    def _end_slow(widget):
        # Ends a Text's slow mode as Ren'Py does: call_slow_done in 8.0; from 8.1 on, Text
        # has no such method, and its next event calls slow_done once slow is False.
        if hasattr(widget, "call_slow_done"):
            widget.call_slow_done(0)
        else:
            widget.slow = False
            renpy.game.interface.timeout(0)

    def _has_auto_voice(identifier):
        auto_voice = renpy.config.auto_voice
        if not auto_voice or identifier is None:
            return False
        if isinstance(auto_voice, str):
            filename = auto_voice.format(id=identifier)
        else:
            filename = auto_voice(identifier)
        return bool(filename) and renpy.loadable(filename)

    def _periodic():
        # Runs on the main thread about 20 times a second, and as each interaction
        # starts: plays what has arrived.
        if _state.speech is None:
            return
        played = False
        for chunk in _state.speech.poll():
            name = client.chunk_filename(chunk.line, chunk.seq)
            audio = renpy.audio.audio.AudioData(chunk.audio, name)
            if chunk.first:
                renpy.music.get_channel("voice").set_volume(_state.volume)
                renpy.sound.play(audio, channel="voice")
            else:
                renpy.sound.queue(audio, channel="voice")
            played = True
        if played:
            # Wake Ren'Py's audio thread now, rather than at its next tick (up to 50 ms).
            renpy.audio.audio.periodic()

    def _start_interact():
        # As an interaction starts, before its first frame is drawn (drawing holds the
        # GIL: nothing else runs meanwhile): a line said live gets a moment for its first
        # audio, so that it is queued before that frame, as a voice file is.
        if _state.speech is not None and voice_start_wait > 0:
            _state.speech.wait_for_voice(voice_start_wait)
        _periodic()

    _voice_afm_callback = renpy.config.afm_callback  # Ren'Py's: waits while a voice plays

    def afm_callback():
        """
        config.afm_callback: auto-forward waits while a line's voice is on its
        way (sent, not yet playing), then, as Ren'Py's own callback does for
        voice files, while it plays. With "wait for voice" off, when skipping
        and with the voice muted, it waits for nothing, as with voice files.
        """

        speech = _state.speech
        if (speech is not None and speech.holds_voice and store._preferences.wait_voice
                and not renpy.config.skipping and not store._preferences.get_mute("voice")):
            return False
        return _voice_afm_callback() if _voice_afm_callback is not None else True

    renpy.config.all_character_callbacks.append(character_callback)
    renpy.config.periodic_callbacks.append(_periodic)
    # After Ren'Py's own voice_interact, which stops the voice channel for a line
    # without a voice file: a line prepared ahead has its audio here already, and a
    # line said live gets its first audio here, so each starts with its interaction,
    # as a voice file does.
    renpy.config.start_interact_callbacks.append(_start_interact)
    renpy.config.afm_callback = afm_callback

