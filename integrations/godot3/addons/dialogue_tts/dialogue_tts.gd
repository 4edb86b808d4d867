extends Node
## Voices dialogue with a local dialogue-tts server: one queue per character, skip, and the
## speech played inside the game's own audio mixer as it is synthesized.
##
## The plugin adds this script as the autoload [code]DialogueTTS[/code]. It connects to
## [member host]:[member port] by itself, polls the socket every frame (never blocking), and
## reconnects with a growing delay when the server is not running.
## [codeblock]
## DialogueTTS.connect("line_finished", self, "_on_line_finished")
## var line: int = DialogueTTS.speak("guard", "Halt! Who goes there?")
## DialogueTTS.skip("guard")  # ends the guard's line at once, starts the next one
## [/codeblock]
## Every id [method speak] returns gets exactly one [signal line_finished], even when the
## server rejects the line or the connection is lost (status [code]"error"[/code] then).
##
## Lookahead: a dialogue system that knows its next lines hands them to [method lookahead]
## (or one by one to [method prepare]) while the current line plays. The server synthesizes
## them ahead, so that their [method speak] starts playing at once instead of after synthesis.
## The node also fetches each prepared line's audio and holds it ([member hold_prepared]):
## speak() of it pushes that audio into the speaker's player in the same call, so it plays in
## the next mix, with no round trip to the server.
## [codeblock]
## DialogueTTS.speak("guard", "Halt!")
## DialogueTTS.lookahead([
##     {"speaker": "traveller", "text": "Just a traveller."},
##     {"speaker": "guard", "text": "At this hour?", "options": {"style": "stern"}},
## ])
## [/codeblock]
##
## Lip-sync and subtitles: with [member timings] (or speak()'s "timings" option) set to
## [code]["word", "viseme"][/code], [signal word_reached] and [signal viseme_changed] follow
## what the player hears, driven by the position of each speaker's playback.
##
## A game that ships the server ([code]dialogue-tts bundle[/code]) sets [member server_path]:
## the node then starts that server itself, connects to it with a fresh token, and stops it
## when the game quits.
##
## A server started with a token (its DIALOGUE_TTS_TOKEN or --token-file) needs the same
## [member token]; the game can also send its own [member cast] of voices and styles. Both are
## read when the connection is made, so setting them in a scene's [code]_ready()[/code] is in
## time for the first connection.

## Emitted when the handshake is done and lines can be spoken.
signal connected(server)
## Emitted when the connection is lost, or a connection attempt fails (once per outage).
## The node keeps retrying by itself, except when the server refused it (see [constant REFUSALS]):
## then it waits for [method connect_to_server].
signal disconnected(reason)
## Emitted when the server has queued [param line]; [param position] counts the lines ahead.
signal line_queued(line, speaker, position)
## Emitted when [param line] becomes its speaker's current line, before its first audio.
signal line_started(line, speaker)
## Emitted for each chunk of a line's audio (mono samples, -1..1), e.g. for lip-sync.
signal audio_received(line, speaker, samples)
## Emitted when the playback of [param line] reaches one of its words (with the "word"
## timing): the word is [code]text.substr(start_char, end_char - start_char)[/code] of the text
## given to [method speak], markup included, e.g. to reveal a subtitle word by word. In order,
## never after the line's [signal line_finished]: a "done" line's words not reached yet are
## emitted just before it, a skipped line's are dropped.
signal word_reached(line, start_char, end_char)
## Emitted when the mouth shape of [param speaker]'s voice changes (with the "viseme" timing):
## one of [constant VISEMES], in time with what the player hears. [code]"sil"[/code] (mouth
## closed) in pauses, and when a line ends or is skipped.
signal viseme_changed(speaker, viseme)
## Emitted last for every line: [param status] is "done", "skipped", "cancelled" or "error".
signal line_finished(line, speaker, status)
## Emitted when the server has prepared a line given to [method prepare] or
## [method lookahead]: a [method speak] of it with the same options now starts with no
## synthesis; with [member hold_prepared], once its audio is held here too (when it could be
## held), so that speak() starts it at once. [param seconds]: the length of its audio.
signal line_prepared(speaker, text, seconds)
## Emitted for every error the server reports, and for lines spoken while disconnected.
signal error(code, message)

enum State { DISCONNECTED, STARTING, CONNECTING, HANDSHAKING, READY }

const MsgPack := preload("msgpack.gd")
const FrameReader := preload("frame_reader.gd")
const Transport := preload("transport.gd")
const TcpTransport := preload("tcp_transport.gd")
const HeldAudio := preload("held_audio.gd")

const PROTOCOL_VERSION: int = 1
const DEFAULT_HOST: String = "127.0.0.1"
const DEFAULT_PORT: int = 5757
const DEFAULT_WEB_PORT: int = 5758
## Sample format requested: raw float32, which [method _decode_samples] decodes in one call.
const AUDIO_FORMAT: String = "f32le"
## Keys of [method speak]'s and [method prepare]'s options that go into the request as they
## are (speak() also takes [code]"interrupt"[/code]). With the speaker, the text and the
## timings, they are what the server matches a say with a prepared line on.
const LINE_OPTIONS: Array = [
	"voice",
	"style",
	"pitch",
	"rate",
	"volume",
	"sample_rate",
	"markup",
]
## The mouth shapes of [signal viseme_changed]: the 15 Oculus/Meta (OVRLipSync) visemes.
const VISEMES: Array = [
	"sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou"
]
## Seconds of audio each speaker's AudioStreamGenerator holds; more waits in [code]pending[/code].
const BUFFER_SECONDS: float = 0.5
## Most frames pushed into an AudioStreamGenerator at once: received chunks are cut into
## pieces this long, which fit its buffer at any sample rate (at 8 kHz it holds 4095).
const PUSH_FRAMES: int = 2048
const CONNECT_TIMEOUT_MSEC: int = 3000
## Most prepare requests in flight at once, with those fetching a prepared line's audio: the
## server runs at most 4 synthesize or prepare requests per connection and refuses more
## (queue_full). The others wait here, in order.
const MAX_PREPARES: int = 4
## Most lines waiting to be prepared, from [method prepare] and from [method lookahead] each;
## past it, prepare() drops the oldest and lookahead() the farthest.
const MAX_WAITING_PREPARES: int = 32
## How many prepared lines are remembered, so that a line handed over again (lookahead lists
## overlap from one line to the next) is not prepared twice.
const REMEMBERED_PREPARES: int = 64
## Optional project settings that override [member host] and [member port].
const HOST_SETTING: String = "dialogue_tts/host"
const PORT_SETTING: String = "dialogue_tts/port"
## Optional project setting that overrides [member server_path].
const SERVER_PATH_SETTING: String = "dialogue_tts/server_path"
## How long a started server may take to load its voice and listen before the node gives up.
const SERVER_START_TIMEOUT_SECONDS: int = 120
const MIN_RETRY_SECONDS: float = 0.5
const MAX_RETRY_SECONDS: float = 8.0
## Environment variable read when [member token] is empty (the server reads the same one).
const TOKEN_ENV: String = "DIALOGUE_TTS_TOKEN"
## Errors with which the server refuses a hello and closes; retrying would only repeat them,
## so the node reports them once and stops reconnecting. Each maps to what to fix.
const REFUSALS: Dictionary = {
	"unauthorized": "set DialogueTTS.token, or DIALOGUE_TTS_TOKEN, to the server's token",
	"invalid_cast": "fix DialogueTTS.cast or DialogueTTS.cast_file",
	"unsupported_protocol": "use an addon and a server of the same protocol version",
}

## Server address; change it before the first frame, or call [method connect_to_server].
var host: String = DEFAULT_HOST
## The server's TCP port.
var port: int = _default_port()
## Sent in the hello, for the server's logs.
var client_name: String = "godot"
## Timings every line asks the server for, unless speak()'s "timings" option says otherwise:
## [code]"word"[/code] for [signal word_reached], [code]"viseme"[/code] for
## [signal viseme_changed]. Empty (the default): none, and no signals.
var timings: Array = []
## When true, the audio of every line prepared by [method prepare] or [method lookahead] is
## fetched from the server's cache and held here (at most 8 lines, 95 s at 22.05 kHz; see
## held_audio.gd): a [method speak] that matches it exactly (speaker, text, and every option
## but [code]interrupt[/code]) while its speaker has no line queued or playing (or with
## [code]interrupt[/code]) pushes it into the player in that call, instead of waiting a round
## trip for the server's first audio. The say still goes to the server, for
## the line's signals, marks and pacing; its audio, the same samples, is not played again.
## A line that does not match, or whose speaker is busy, plays from the server as usual.
var hold_prepared: bool = true
## Audio bus of the players this node creates for speakers without their own player.
var bus: String = "Master"
## When false, the node connects only when [method connect_to_server] is called.
var auto_connect: bool = true
## The server's shared secret, when it was started with one. Empty: the
## [code]DIALOGUE_TTS_TOKEN[/code] environment variable, if set. Never printed.
var token: String = ""
## The game's cast, sent in the hello; it replaces the server's own cast for this game. Shaped
## like a cast file: [code]{"speakers": {"guard": {"pitch": 0.85, "styles": {"angry":
## {"rate": 1.15, "volume": 1.4}}}}}[/code]. Empty: the server's cast.
var cast: Dictionary = {}
## A cast file (TOML) to send instead of [member cast], e.g. [code]"res://cast.toml"[/code].
## Export it with the game: add [code]*.toml[/code] to the export preset's non-resource filter.
var cast_file: String = ""
## The server the game ships ([code]dialogue-tts bundle[/code]), which this node starts in
## [code]_ready()[/code] (or at [method start_server]) and stops when the game quits, e.g.
## [code]"dialogue-tts-server/dialogue-tts-server"[/code] ([code].exe[/code] is added on
## Windows). A relative path starts from the folder of the game's executable in an exported
## game, and from the project folder when the game runs from the editor. Also the project
## setting [code]dialogue_tts/server_path[/code]. Empty (the default): connect to a server
## that runs already, at [member host]:[member port].
var server_path: String = ""

var _state: int = State.DISCONNECTED
var _transport: Transport = _new_transport()
var _reader := FrameReader.new()
var _codec := MsgPack.new()
var _outbox := PoolByteArray()
var _connect_started_msec: int = 0
var _retry_in: float = 0.0
var _retry_delay: float = MIN_RETRY_SECONDS
var _warned: bool = false  # "server not running" is reported once per outage
var _refused: bool = false  # the server refused the hello: no retries until connect_to_server()
var _welcome: Dictionary = {}
var _next_id: int = 0
var _next_line: int = 0
var _says: Dictionary = {}  # request id -> line id, until "queued" or "error" answers it
var _lines: Dictionary = {}  # line id -> speaker, for every line without line_finished yet
var _speakers: Dictionary = {}  # speaker name -> Speaker
var _all_paused: bool = false
var _prepares: Array = []  # prepare requests from prepare(), not sent yet
var _lookahead: Array = []  # the same from lookahead(), replaced by each call
var _prepares_sent: Dictionary = {}  # request id -> its prepare request, until answered
var _prepared: Array = []  # keys of the lines prepared lately, oldest first
var _held := HeldAudio.new()
var _can_hold: bool = true  # false when the server cannot send raw audio (an older one)
var _held_lines: Dictionary = {}  # line id -> true: started from held audio, until finished
var _output_latency: float = 0.0  # AudioServer's, read per new player: costly to query
var _server_pid: int = -1  # the server this node started (server_path), until it stops it
var _server_started_msec: int = 0


func _ready() -> void:
	host = _setting(HOST_SETTING, host)
	port = _setting(PORT_SETTING, port)
	server_path = _setting(SERVER_PATH_SETTING, server_path)
	if auto_connect and _starts_server():
		start_server()
	elif auto_connect:
		connect_to_server(host, port)


func _process(delta: float) -> void:
	match _state:
		State.DISCONNECTED:
			if auto_connect and not _refused:
				_retry_in -= delta
				if _retry_in <= 0.0:
					_start_connecting()
		State.STARTING:
			_poll_server()
		State.CONNECTING:
			var status: int = _transport.poll()
			if status == Transport.Status.OPEN:
				_state = State.HANDSHAKING
				# The hello goes first, built now so that it has the latest token and cast.
				var hello: PoolByteArray = _codec.encode_frame(_hello())
				hello.append_array(_outbox)
				_outbox = hello
			elif status == Transport.Status.CLOSED:
				_drop("no dialogue-tts server at %s:%d" % [host, port])
			elif OS.get_ticks_msec() - _connect_started_msec > CONNECT_TIMEOUT_MSEC:
				_drop("timed out connecting to %s:%d" % [host, port])
		_:
			var status: int = _transport.poll()
			_receive()  # first: what came before a close counts, such as a refusal's error
			if _state == State.DISCONNECTED:
				pass  # _receive() dropped the connection
			elif status != Transport.Status.OPEN:
				_drop("connection to the dialogue-tts server lost")
			else:
				_send_prepares()
				_send_outbox()
	for speaker in _speakers.values():
		if speaker.paused and speaker.player != null and not speaker.player.get("stream_paused"):
			# A 2D/3D player's new playback joins the mix a physics frame after play(), and a
			# pause set before then does not hold: set it again.
			speaker.player.set("stream_paused", true)
		_feed(speaker)
		if not speaker.marks.empty():
			_emit_marks(speaker)


func _exit_tree() -> void:
	_transport.close()
	_stop_server()


func _notification(what: int) -> void:
	if what == NOTIFICATION_PREDELETE:
		_stop_server()  # a node freed without ever leaving the tree


## (Re)connects to a server; lines spoken from now until the handshake wait for it. Also how
## to try again after the server refused the game (a wrong [member token], say).
## [param new_port] 0: [constant DEFAULT_PORT].
func connect_to_server(new_host: String = DEFAULT_HOST, new_port: int = 0) -> void:
	host = new_host
	port = new_port if new_port > 0 else _default_port()
	_refused = false
	if _state != State.DISCONNECTED:
		_drop("reconnecting")
	_start_connecting()


## Returns true once the handshake is done.
func is_server_ready() -> bool:
	return _state == State.READY


## Queues [param text] for [param speaker] and returns the line id that every signal about
## this line carries. [param options]: [code]voice[/code] (a name from [method get_voices]),
## [code]style[/code] (a style of the cast, e.g. "angry"), [code]pitch[/code] (0.5 to 2, 1.0
## normal), [code]rate[/code] (0.1 to 10), [code]volume[/code] (0 to 10),
## [code]sample_rate[/code] (Hz; default the voice's own), [code]interrupt[/code] (skip the
## speaker's current line and drop its queue first), [code]markup[/code] ("plain", "bbcode"
## for RichTextLabel text, or "renpy"), [code]timings[/code] (this line's, instead of
## [member timings]: e.g. [code]["word"][/code], or [code][][/code] for none).
func speak(speaker: String, text: String, options: Dictionary = {}) -> int:
	_next_line += 1
	var line: int = _next_line
	var key: String = str(_line_request("prepare", speaker, text, options))
	var held: HeldAudio.Line = _take_held(key, speaker, options.get("interrupt", false))
	_lines[line] = speaker
	if _state == State.DISCONNECTED:
		call_deferred("_fail_line", line, "not_connected", "no dialogue-tts server connection")
		return line
	var request: Dictionary = _line_request("say", speaker, text, options)
	request["line"] = line
	request["format"] = AUDIO_FORMAT
	if options.has("interrupt"):
		request["interrupt"] = options["interrupt"]
	_drop_waiting(key)
	var target: Speaker = _get_speaker(speaker)  # created now, so pause() state applies
	if options.get("interrupt", false):
		_silence(target)
	if held != null:
		_play_held(target, line, held, request.has("timings"))
	_says[_send(request)] = line
	return line


## Returns true if [param line] started from audio held here (see [member hold_prepared]),
## until its [signal line_finished].
func is_line_held(line: int) -> bool:
	return _held_lines.has(line)


## Asks the server to synthesize a line ahead, so that a later [method speak] of it, with
## the same [param speaker], [param text] and [param options] (those of speak(); only
## [code]interrupt[/code] may differ), starts playing at once. [signal line_prepared] follows.
## At most [constant MAX_PREPARES] are in flight; the others wait, in order, and are sent as
## the server answers, never holding up a frame. Lines already prepared are not sent again.
## A prepare cannot be cancelled; a line that is not spoken after all costs the server's
## time only.
func prepare(speaker: String, text: String, options: Dictionary = {}) -> void:
	_prepares.append(_line_request("prepare", speaker, text, options))
	if _prepares.size() > MAX_WAITING_PREPARES:
		_prepares.pop_front()


## Hands over the lines the dialogue will speak next, soonest first, for the server to
## prepare while the current one plays (see [method prepare]). Each is a Dictionary
## [code]{"speaker": String, "text": String, "options": Dictionary}[/code] ([code]options[/code]
## optional, as given to [method speak]). Replaces the lines of the previous call that were
## not sent yet: after a choice or a jump, hand over the new path, or [code][][/code] for
## none. Those already in flight finish, and are simply not used. Audio held for lines of
## earlier calls ([member hold_prepared]) that are on neither this path nor the last one is
## dropped.
func lookahead(lines: Array) -> void:
	_lookahead.clear()
	var keys: Array = []
	for entry in lines:
		if _lookahead.size() == MAX_WAITING_PREPARES:
			break
		if (
			not entry is Dictionary
			or not entry.get("speaker") is String
			or not entry.get("text") is String
			or not entry.get("options", {}) is Dictionary
		):
			push_error("dialogue-tts: lookahead() takes {speaker, text, options}, not %s" % [entry])
			continue
		_lookahead.append(
			_line_request("prepare", entry["speaker"], entry["text"], entry.get("options", {}))
		)
		keys.append(str(_lookahead.back()))
	_held.set_path(keys)


## Ends [param speaker]'s current line at once (status "skipped"); its next line starts.
func skip(speaker: String) -> void:
	if _speakers.has(speaker):
		_silence(_speakers[speaker])
	_send({"type": "skip", "speaker": speaker})


## Cancels one line, queued or playing.
func cancel(line: int) -> void:
	var speaker: String = _lines.get(line, "")
	if _speakers.has(speaker) and _speakers[speaker].current == line:
		_silence(_speakers[speaker])
	_send({"type": "cancel", "line": line})


## Cancels the current and queued lines of [param speaker], or of everyone when empty, and
## drops their held audio ([member hold_prepared]), that being fetched included: a game
## clears on a jump or a rollback, after which lines ahead are handed over anew.
func clear(speaker: String = "") -> void:
	for target in _targets(speaker):
		_silence(target)
	_held.drop(speaker)
	_send({"type": "clear"} if speaker.empty() else {"type": "clear", "speaker": speaker})


## Holds [param speaker] (everyone when empty): its audio stops where it is.
func pause(speaker: String = "") -> void:
	_set_paused(speaker, true)
	_send({"type": "pause"} if speaker.empty() else {"type": "pause", "speaker": speaker})


## Undoes [method pause].
func resume(speaker: String = "") -> void:
	_set_paused(speaker, false)
	_send({"type": "resume"} if speaker.empty() else {"type": "resume", "speaker": speaker})


## Returns the server's voices: dictionaries with "name", "language", "sample_rate" and
## "speakers". Empty until connected.
func get_voices() -> Array:
	return _welcome.get("voices", [])


## Returns true while [param speaker] (anyone when empty) has lines queued or playing, or
## received audio still waiting to be played.
func is_speaking(speaker: String = "") -> bool:
	for target in _targets(speaker):
		if target.current != -1 or not target.pending.empty():
			return true
	if speaker.empty():
		return not _lines.empty()
	return _lines.values().has(speaker)


## Plays [param speaker]'s voice through [param player] (an AudioStreamPlayer2D or 3D on the
## character, for positional speech) instead of a plain AudioStreamPlayer.
func set_speaker_player(speaker: String, player: Node) -> void:
	var target: Speaker = _get_speaker(speaker)
	if target.player != null and target.player.get_parent() == self:
		target.player.queue_free()
	target.player = player
	if target.sample_rate > 0:
		_start_player(target)


func _start_connecting() -> void:
	_transport = _new_transport()
	_reader = FrameReader.new()
	_welcome = {}
	_outbox = PoolByteArray()
	if _transport.open(host, port) != OK:
		_drop("cannot connect to %s:%d" % [host, port])
		return
	_state = State.CONNECTING
	_connect_started_msec = OS.get_ticks_msec()
	if _all_paused:
		_send({"type": "pause"})
	for speaker in _speakers.values():
		if speaker.paused and not _all_paused:
			_send({"type": "pause", "speaker": speaker.name})


## Returns the hello, with the token and the game's cast when they are set.
func _hello() -> Dictionary:
	var hello: Dictionary = {"type": "hello", "protocol": PROTOCOL_VERSION, "client": client_name}
	var secret: String = token if not token.empty() else OS.get_environment(TOKEN_ENV)
	if not secret.empty():
		hello["token"] = secret
	if not cast_file.empty():
		var text: String = _read_cast_file()
		if not text.empty():
			hello["cast"] = text  # TOML text: the server parses it
	elif not cast.empty():
		hello["cast"] = cast
	return hello


## Returns a say or prepare request for a line: both are built here, so that a prepared line
## carries exactly what its say will (the server matches them on it).
func _line_request(type: String, speaker: String, text: String, options: Dictionary) -> Dictionary:
	var request: Dictionary = {"type": type, "speaker": speaker, "text": text}
	for key in LINE_OPTIONS:
		if options.has(key):
			request[key] = options[key]
	var wanted: Array = []  # a plain Array, whatever was given: the encoder writes those
	for timing in options.get("timings", timings):
		wanted.append(timing)
	if not wanted.empty():
		request["timings"] = wanted
	return request


## Encodes [param request] with a fresh id and sends it; returns the id. When connected and
## nothing is waiting, it goes out at once rather than at the next frame's _process().
func _send(request: Dictionary) -> int:
	_next_id += 1
	request["id"] = _next_id
	var frame: PoolByteArray = _codec.encode_frame(request)
	if _state == State.READY and _outbox.empty() and _transport.send(frame) == OK:
		return _next_id
	if _state != State.DISCONNECTED:
		_outbox.append_array(frame)  # a failed send is retried, then reported, by _process()
	return _next_id


## Sends waiting prepare requests while fewer than [constant MAX_PREPARES] are in flight:
## prepare()'s first, then the lookahead's, soonest first; lines already prepared or in flight
## are passed over.
func _send_prepares() -> void:
	while _prepares_sent.size() + _held.fetches.size() < MAX_PREPARES:
		var request: Dictionary = {}
		var from_lookahead: bool = false
		if not _prepares.empty():
			request = _prepares.pop_front()
		elif not _lookahead.empty():
			request = _lookahead.pop_front()
			from_lookahead = true
		else:
			return
		var key: String = str(request)
		if key in _prepared or _is_preparing(key):
			continue
		var entry: Dictionary = {"request": request, "key": key, "lookahead": from_lookahead}
		_prepares_sent[_send(request.duplicate())] = entry


## Drops the line of [param key] from the lines waiting to be prepared: it is said now.
func _drop_waiting(key: String) -> void:
	for waiting in [_prepares, _lookahead]:
		for index in range(waiting.size() - 1, -1, -1):
			if str(waiting[index]) == key:
				waiting.remove(index)


func _is_preparing(key: String) -> bool:
	for entry in _prepares_sent.values() + _held.fetches.values():
		if entry["key"] == key:
			return true
	return false


func _send_outbox() -> void:
	if _outbox.empty():
		return
	if _transport.send(_outbox) != OK:
		_drop("cannot send to the dialogue-tts server")
		return
	_outbox = PoolByteArray()


func _receive() -> void:
	_reader.feed(_transport.receive())
	while _state != State.DISCONNECTED:
		var message: Dictionary = _reader.next_message()
		if not _reader.error_code.empty():
			emit_signal("error", _reader.error_code, _reader.error_message)
			if _reader.fatal:
				_drop(_reader.error_message)
			continue
		if message.empty():
			return
		_handle(message)


func _handle(message: Dictionary) -> void:
	match message["type"]:
		"welcome":
			_on_welcome(message)
		"queued":
			_says.erase(message.get("id"))
			emit_signal("line_queued", message["line"], message["speaker"], message["position"])
		"started":
			_on_started(message)
		"marks":
			_on_marks(message)
		"audio":
			_on_audio(message)
		"finished":
			_on_finished(message)
		"prepared":
			_on_prepared(message)
		"audio_file":
			_on_audio_file(message)
		"voices":
			_welcome["voices"] = message["voices"]
		"error":
			_on_error(message)


func _on_welcome(message: Dictionary) -> void:
	_welcome = message
	_state = State.READY
	_retry_delay = MIN_RETRY_SECONDS
	_warned = false
	emit_signal("connected", str(message.get("server", "")))


func _on_started(message: Dictionary) -> void:
	var speaker: Speaker = _get_speaker(message["speaker"])
	if speaker.sample_rate != message["sample_rate"]:
		_clear_pending(speaker)
		speaker.sample_rate = message["sample_rate"]
		_start_player(speaker)
	speaker.current = message["line"]
	emit_signal("line_started", message["line"], message["speaker"])


## Keeps a piece's word and viseme marks; they come before the audio they describe.
func _on_marks(message: Dictionary) -> void:
	var speaker: Speaker = _get_speaker(message["speaker"])
	if speaker.current != message["line"]:
		return  # marks of a line skipped here
	var marks: LineMarks = null
	if not speaker.marks.empty() and speaker.marks.back().line == message["line"]:
		marks = speaker.marks.back()
	else:
		marks = LineMarks.new()
		marks.line = message["line"]
		speaker.marks.append(marks)
	if message.get("words") is Array:
		marks.words += message["words"]
	if message.get("visemes") is Array:
		marks.visemes += message["visemes"]


func _on_audio(message: Dictionary) -> void:
	var speaker: Speaker = _get_speaker(message["speaker"])
	if speaker.current != message["line"]:
		return  # audio of a line skipped here, still in flight from the server
	var samples: PoolRealArray = _decode_samples(message["data"])
	if speaker.held_line != message["line"]:  # a held line's samples went in at speak()
		if not speaker.marks.empty():
			var marks: LineMarks = speaker.marks.back()
			if marks.line == message["line"] and not marks.has_audio:
				marks.has_audio = true  # the line's first sample is the next frame received
				marks.first_frame = speaker.frames_received
		_queue_samples(speaker, message["line"], samples)
	emit_signal("audio_received", message["line"], message["speaker"], samples)


## Queues a line's samples for the speaker's player and pushes what its buffer has room for.
func _queue_samples(speaker: Speaker, line: int, samples: PoolRealArray) -> void:
	if speaker.first_line != line:
		speaker.first_line = line
		speaker.first_frame = speaker.frames_received
	speaker.frames_received += samples.size()
	speaker.pending.append(samples)
	_feed(speaker)


func _on_finished(message: Dictionary) -> void:
	var speaker: Speaker = _get_speaker(message["speaker"])
	if speaker.current == message["line"]:
		speaker.current = -1
		speaker.held_line = -1
		if message["status"] == "done":
			_finish_marks(speaker, message["line"])
		else:
			_silence(speaker)
	if _lines.has(message["line"]):
		_lines.erase(message["line"])
		_held_lines.erase(message["line"])
		emit_signal("line_finished", message["line"], message["speaker"], message["status"])


func _on_prepared(message: Dictionary) -> void:
	var entry: Dictionary = _prepares_sent.get(message.get("id"), {})
	if entry.empty():
		return
	_prepares_sent.erase(message["id"])
	_prepared.append(entry["key"])
	if _prepared.size() > REMEMBERED_PREPARES:
		_prepared.pop_front()
	entry["seconds"] = message.get("duration", 0.0)
	if hold_prepared and _can_hold and entry["seconds"] <= HeldAudio.MAX_LINE_SECONDS:
		# Fetch its audio, served from the server's cache: the samples its say will stream.
		var fetch: Dictionary = entry["request"].duplicate()
		fetch["type"] = "synthesize"
		fetch["format"] = AUDIO_FORMAT
		fetch.erase("timings")
		_held.fetches[_send(fetch)] = entry
		return  # line_prepared once it is held
	_emit_prepared(entry)


func _on_audio_file(message: Dictionary) -> void:
	var entry: Dictionary = _held.fetches.get(message.get("id"), {})
	if entry.empty():
		return
	_held.fetches.erase(message["id"])
	if message.get("format") == AUDIO_FORMAT and _held.wants(entry):
		var samples: PoolRealArray = _decode_samples(message["data"])
		var speaker: String = entry["request"]["speaker"]
		_held.hold(entry["key"], speaker, samples, message["sample_rate"], entry["lookahead"])
	_emit_prepared(entry)


func _emit_prepared(entry: Dictionary) -> void:
	var request: Dictionary = entry["request"]
	emit_signal("line_prepared", request["speaker"], request["text"], entry["seconds"])


func _on_error(message: Dictionary) -> void:
	var code: String = message.get("code", "")
	var text: String = message.get("message", "")
	if REFUSALS.has(code):
		emit_signal("error", code, text)
		_refused = true
		_drop(
			"the server refused this game (%s: %s); not retrying: %s" % [code, text, REFUSALS[code]]
		)
		return
	var fetch: Dictionary = _held.fetches.get(message.get("id"), {})
	if not fetch.empty():
		# Its audio could not be fetched, so it plays from the server's cache. A server
		# without raw audio (older than this addon) says so once, and is not asked again.
		_held.fetches.erase(message["id"])
		_can_hold = _can_hold and code != "invalid_field"
		_emit_prepared(fetch)
		return
	push_warning("dialogue-tts: %s: %s" % [code, text])
	emit_signal("error", code, text)
	_prepares_sent.erase(message.get("id"))  # a line that could not be prepared
	var line = _says.get(message.get("id"))
	if line != null:
		_says.erase(message["id"])
		var speaker: Speaker = _speakers.get(_lines.get(line, ""))
		if speaker != null and speaker.current == line:
			_silence(speaker)  # held audio of a line the server refused
		_finish_line(line, "error")


## Emits the error and line_finished for a line that never reached the server.
func _fail_line(line: int, code: String, text: String) -> void:
	emit_signal("error", code, text)
	_finish_line(line, "error")


func _finish_line(line: int, status: String) -> void:
	if _lines.has(line):
		var speaker: String = _lines[line]
		_lines.erase(line)
		_held_lines.erase(line)
		emit_signal("line_finished", line, speaker, status)


## Closes the connection; every unfinished line ends with status "error".
func _drop(reason: String) -> void:
	var was_connected: bool = _state == State.HANDSHAKING or _state == State.READY
	_transport.close()
	_state = State.DISCONNECTED
	_retry_in = _retry_delay
	_retry_delay = min(_retry_delay * 2.0, MAX_RETRY_SECONDS)
	_says.clear()
	# Prepares in flight are lost, and a server started again has none: the waiting ones are
	# sent to the next connection.
	_prepares_sent.clear()
	_prepared.clear()
	_held.drop("")  # the next server may have another cast, voices, or lexicon
	_held.fetches.clear()
	_can_hold = true
	for speaker in _speakers.values():
		speaker.current = -1
		_silence(speaker)
	for line in _lines.keys():
		_finish_line(line, "error")
	if was_connected or not _warned:
		_warned = true
		if _refused:
			push_error("dialogue-tts: %s, then call connect_to_server()" % reason)
		else:
			var retrying: String = ", retrying" if auto_connect else ""
			push_warning(
				"dialogue-tts: %s%s (start it with `%s`)" % [reason, retrying, _serve_command()]
			)
		emit_signal("disconnected", reason)


#region The server the game ships (server_path)


## Starts the server of [member server_path] (once) and connects to it as soon as it listens:
## [code]_ready()[/code] calls it, unless [member auto_connect] is off. Loading the voice takes
## a few seconds, so a splash screen may wait for [signal connected]; lines spoken meanwhile
## wait for the server. It gets a fresh random [member token], so no other program on the
## player's machine can use it, and it ends with the game, a crash included
## ([code]--parent-pid[/code]).
func start_server() -> void:
	if _server_pid != -1:
		return
	if not _starts_server():
		push_error("dialogue-tts: start_server() needs a server_path (and a desktop game)")
		return
	if _state == State.CONNECTING:
		_transport.close()  # not connected yet: what was spoken waits for the started server
	elif _state != State.DISCONNECTED:
		_drop("starting the dialogue-tts server")
	_refused = false
	_remove_server_files()
	token = _new_token()
	var path: String = _server_executable()
	var parent: String = str(OS.get_process_id())
	var port_file: String = _server_file("port")
	var arguments: Array = [
		"--host", DEFAULT_HOST, "--port", "0", "--parent-pid", parent, "--port-file", port_file
	]
	_server_pid = _launch_server(path, arguments)
	if _server_pid == -1:
		_server_failed("cannot start the dialogue-tts server %s: no such program" % path)
		return
	_state = State.STARTING
	_server_started_msec = OS.get_ticks_msec()


func _starts_server() -> bool:
	return not server_path.empty() and not OS.has_feature("web")


## Returns [member server_path] as an absolute path, as the class docs describe.
func _server_executable() -> String:
	var path: String = server_path
	if OS.get_name() == "Windows" and not path.to_lower().ends_with(".exe"):
		path += ".exe"
	if path.is_abs_path():
		return path
	if OS.has_feature("editor"):
		return ProjectSettings.globalize_path("res://").plus_file(path)
	return OS.get_executable_path().get_base_dir().plus_file(path)


## Connects once the started server has written its port ([code]--port-file[/code]); gives
## up when the server ended first or took too long.
func _poll_server() -> void:
	var found: int = _read_port_file(_server_file("port"))
	if found > 0:
		_remove_server_files()
		host = DEFAULT_HOST
		port = found
		var waiting: PoolByteArray = _outbox  # the lines spoken while the server started
		_start_connecting()
		if _state == State.CONNECTING:
			_outbox.append_array(waiting)
	elif not _server_running():
		_server_failed("the dialogue-tts server %s ended before it listened" % server_path)
	elif OS.get_ticks_msec() - _server_started_msec > SERVER_START_TIMEOUT_SECONDS * 1000:
		var seconds: int = SERVER_START_TIMEOUT_SECONDS
		_server_failed("the dialogue-tts server %s did not listen in %d s" % [server_path, seconds])


## Reports a server that could not start, once; the node does not retry until
## [method start_server] or [method connect_to_server] is called.
func _server_failed(reason: String) -> void:
	_stop_server()
	_remove_server_files()  # also those of a launch that failed
	_refused = true
	_warned = true  # reported here, not by _drop()
	push_error("dialogue-tts: %s (check server_path)" % reason)
	_drop(reason)
	emit_signal("disconnected", reason)


func _stop_server() -> void:
	if _server_pid == -1:
		return  # none started (the web has no process id to ask for: don't)
	OS.kill(_server_pid)
	_server_pid = -1
	_remove_server_files()


## The files through which the node and the server it starts meet, in the user data folder:
## [param kind] "port" ([code]--port-file[/code]) or "token" (Godot 3's way to pass it).
static func _server_file(kind: String) -> String:
	return OS.get_user_data_dir().plus_file(
		"dialogue_tts_server_%d.%s" % [OS.get_process_id(), kind]
	)


func _remove_server_files() -> void:
	for kind in ["port", "token"]:
		_remove_file(_server_file(kind))


static func _new_token() -> String:
	return Crypto.new().generate_random_bytes(32).hex_encode()


#endregion

#region Differs in Godot 3: the transport, settings, files, audio


## Godot 3 games connect over TCP: the web transport is Godot 4 only.
static func _new_transport() -> Transport:
	return TcpTransport.new()


static func _default_port() -> int:
	return DEFAULT_PORT


static func _serve_command() -> String:
	return "dialogue-tts serve"


## Returns the project setting [param setting], or [param default] when it is not set.
static func _setting(setting: String, default):
	return ProjectSettings.get_setting(setting) if ProjectSettings.has_setting(setting) else default


## Returns the text of [member cast_file], or "" (with an error logged) when it is unreadable.
func _read_cast_file() -> String:
	var file := File.new()
	var opened: int = file.open(cast_file, File.READ)
	if opened != OK:
		push_error("dialogue-tts: cannot read cast_file %s: error %d" % [cast_file, opened])
		return ""
	var text: String = file.get_as_text()
	file.close()
	return text


## Decodes f32le bytes without a per-sample loop: Godot 3 has no to_float32_array(), but
## prefixed with the header of Godot's binary serialization (type TYPE_REAL_ARRAY, then the
## sample count, little-endian), they are a serialized PoolRealArray that bytes2var() decodes
## in C++.
static func _decode_samples(data: PoolByteArray) -> PoolRealArray:
	var count: int = data.size() / 4
	var bytes := PoolByteArray([TYPE_REAL_ARRAY, 0, 0, 0])
	bytes.append_array(
		PoolByteArray([count & 0xff, (count >> 8) & 0xff, (count >> 16) & 0xff, count >> 24])
	)
	bytes.append_array(data)
	return bytes2var(bytes)


## Godot 3 always streams: there is no sample playback to turn off.
static func _use_stream_playback(_player: Node) -> void:
	pass


## Sets the stream again and plays it: in Godot 3 that makes a new, empty playback.
static func _replay(player: Node) -> void:
	player.set("stream", player.get("stream"))
	player.call("play")


#endregion

#region Differs in Godot 3: the server process


## Starts [param path] and returns its process id, or -1 when there is no such program.
## Godot 3.2 has no OS.set_environment(), so the token travels in a file of the player's user
## data folder that the server reads as it starts ([code]--token-file[/code]) and the node
## removes once the server listens: never on the command line, which other users can read.
## On Windows, Godot 3.2 passes no CREATE_NO_WINDOW here (a console window shows); later 3.x
## releases do: see integrations/godot/README.md.
func _launch_server(path: String, arguments: Array) -> int:
	var file := File.new()
	if not file.file_exists(path):
		return -1
	var token_file: String = _server_file("token")
	if file.open(token_file, File.WRITE) != OK:
		push_error("dialogue-tts: cannot write %s" % token_file)
		return -1
	file.store_line(token)
	file.close()
	return OS.execute(path, arguments + ["--token-file", token_file], false)


## Godot 3 cannot tell whether a process it started still runs: a server that ended before it
## listened is noticed when SERVER_START_TIMEOUT_SECONDS have passed.
func _server_running() -> bool:
	return true


## Returns the port in [param path], or 0 while there is no such file.
static func _read_port_file(path: String) -> int:
	var file := File.new()
	if not file.file_exists(path) or file.open(path, File.READ) != OK:
		return 0
	var text: String = file.get_as_text().strip_edges()
	file.close()
	return text.to_int() if text.is_valid_integer() else 0


static func _remove_file(path: String) -> void:
	var directory := Directory.new()
	if directory.file_exists(path):
		directory.remove(path)


#endregion


func _get_speaker(speaker_name: String) -> Speaker:
	if not _speakers.has(speaker_name):
		var speaker := Speaker.new()
		speaker.name = speaker_name
		speaker.paused = _all_paused
		_speakers[speaker_name] = speaker
	return _speakers[speaker_name]


## Returns [param speaker_name]'s Speaker, or every Speaker when the name is empty.
func _targets(speaker_name: String) -> Array:
	var targets: Array = []
	if speaker_name.empty():
		for speaker in _speakers.values():
			targets.append(speaker)
	elif _speakers.has(speaker_name):
		targets.append(_speakers[speaker_name])
	return targets


## Gives the speaker's player a generator at the voice's sample rate and starts it.
func _start_player(speaker: Speaker) -> void:
	if speaker.player == null:
		var player := AudioStreamPlayer.new()
		player.bus = bus
		add_child(player)
		speaker.player = player
	var generator := AudioStreamGenerator.new()
	generator.mix_rate = speaker.sample_rate
	generator.buffer_length = BUFFER_SECONDS
	_output_latency = AudioServer.get_output_latency()
	_use_stream_playback(speaker.player)
	speaker.player.set("stream", generator)
	_restart_player(speaker)


## Gives the speaker's player a new, empty playback, which is how a generator's buffer is
## emptied at once (clear_buffer() refuses while it plays).
func _restart_player(speaker: Speaker) -> void:
	_replay(speaker.player)
	speaker.playback = speaker.player.call("get_stream_playback")
	speaker.player.set("stream_paused", speaker.paused)
	# Frames are counted from this new, empty playback: what the old one held is gone.
	for marks in speaker.marks:
		marks.first_frame -= speaker.frames_pushed
	speaker.first_frame -= speaker.frames_pushed
	speaker.frames_received -= speaker.frames_pushed
	speaker.frames_pushed = 0
	speaker.buffer_frames = speaker.playback.get_frames_available()


## Drops the speaker's received audio, buffered and pending, and its marks, at once.
func _silence(speaker: Speaker) -> void:
	_clear_pending(speaker)
	speaker.current = -1
	speaker.held_line = -1
	speaker.marks.clear()
	_close_mouth(speaker)
	if speaker.playback != null:
		_restart_player(speaker)


func _clear_pending(speaker: Speaker) -> void:
	speaker.pending.clear()
	speaker.pending_offset = 0
	speaker.frames_received = speaker.frames_pushed


func _set_paused(speaker_name: String, paused: bool) -> void:
	if speaker_name.empty():
		_all_paused = paused
	var targets: Array = _targets(speaker_name)
	if not speaker_name.empty() and targets.empty():
		targets.append(_get_speaker(speaker_name))
	for speaker in targets:
		speaker.paused = paused
		if speaker.player != null:
			speaker.player.set("stream_paused", paused)


## Moves pending samples into the generator as far as its buffer has room, at most
## [constant PUSH_FRAMES] at a time. The generator plays stereo frames: turning samples into
## frames here, as they go in, is the only per-sample work, and it keeps pace with playback,
## so a whole held line costs a frame no more than streamed audio does.
func _feed(speaker: Speaker) -> void:
	while not speaker.pending.empty() and speaker.playback != null:
		var samples: PoolRealArray = speaker.pending[0]
		var start: int = speaker.pending_offset
		var count: int = int(min(PUSH_FRAMES, samples.size() - start))
		if not speaker.playback.can_push_buffer(count):
			return
		var frames := PoolVector2Array()
		frames.resize(count)
		for i in count:
			frames[i] = Vector2(samples[start + i], samples[start + i])
		speaker.playback.push_buffer(frames)
		speaker.frames_pushed += count
		speaker.pending_offset += count
		if speaker.pending_offset == samples.size():
			speaker.pending.pop_front()
			speaker.pending_offset = 0


## Returns how many frames of the speaker's playback the player has heard: the frames pushed
## minus those its buffer still holds (so a buffer underrun holds the position, unlike
## get_playback_position()), less the output latency not yet covered by the time since the
## last mix, as in Godot's "Sync the gameplay with audio and music" tutorial.
func _played_frames(speaker: Speaker) -> int:
	var buffered: int = speaker.buffer_frames - speaker.playback.get_frames_available()
	var late: float = _output_latency - AudioServer.get_time_since_last_mix()
	return speaker.frames_pushed - buffered - int(max(late, 0.0) * speaker.sample_rate)


## Emits the words and the mouth shape that the playback of the speaker's line has reached.
## Called every frame while a line has marks: a few engine calls, no per-sample work.
func _emit_marks(speaker: Speaker) -> void:
	var marks: LineMarks = speaker.marks[0]
	if not marks.has_audio or speaker.playback == null:
		return
	var position: int = _played_frames(speaker) - marks.first_frame
	while marks.next_word < marks.words.size() and marks.words[marks.next_word][0] <= position:
		marks.next_word += 1
		_emit_word(marks, marks.words[marks.next_word - 1])
		if speaker.marks.empty() or speaker.marks[0] != marks:
			return  # a handler skipped or cancelled the line
	while (
		marks.next_viseme < marks.visemes.size() and marks.visemes[marks.next_viseme][0] <= position
	):
		marks.next_viseme += 1
	if marks.next_viseme > 0:
		var shape: Array = marks.visemes[marks.next_viseme - 1]
		# Past the end of the last shape reached: a pause ({w} in the text), mouth closed.
		_set_viseme(speaker, shape[2] if position < shape[0] + shape[1] else "sil")


## Emits word_reached for [param word] ([start, length, start_char, end_char]), once per span:
## espeak may read one written word ("250") as several.
func _emit_word(marks: LineMarks, word: Array) -> void:
	if word[2] == marks.last_start and word[3] == marks.last_end:
		return
	marks.last_start = word[2]
	marks.last_end = word[3]
	emit_signal("word_reached", marks.line, word[2], word[3])


func _set_viseme(speaker: Speaker, viseme: String) -> void:
	if viseme != speaker.viseme:
		speaker.viseme = viseme
		emit_signal("viseme_changed", speaker.name, viseme)


## Emits "sil" if the speaker's mouth was left open.
func _close_mouth(speaker: Speaker) -> void:
	if not speaker.viseme.empty():
		_set_viseme(speaker, "sil")


## Ends the marks of a line that finished "done": its words not reached yet are emitted now
## (the server's pacing sends finished about when the audio has played, so these are few),
## then the mouth closes.
func _finish_marks(speaker: Speaker, line: int) -> void:
	for index in speaker.marks.size():
		var marks: LineMarks = speaker.marks[index]
		if marks.line == line:
			speaker.marks.remove(index)
			for word_index in range(marks.next_word, marks.words.size()):
				_emit_word(marks, marks.words[word_index])
			break
	if speaker.marks.empty():
		_close_mouth(speaker)


#region Held audio of prepared lines (hold_prepared)


## Returns the held audio of the line of [param key] and forgets it, or null unless it can
## start now: held, connected, and its speaker with no line queued or playing (else the
## line waits its turn on the server, and plays from there) unless [param interrupt].
func _take_held(key: String, speaker: String, interrupt: bool) -> HeldAudio.Line:
	if not _held.has(key) or _state != State.READY:
		return null
	if not interrupt and _lines.values().has(speaker):
		return null
	return _held.take(key)


## Starts [param line] from its held audio: in the speaker's player at once, so that it plays
## in the next mix. [param timed]: the line asked for marks, which come with its say.
func _play_held(speaker: Speaker, line: int, held: HeldAudio.Line, timed: bool) -> void:
	if speaker.playback == null or speaker.sample_rate != held.sample_rate:
		_clear_pending(speaker)
		speaker.sample_rate = held.sample_rate
		_start_player(speaker)
	speaker.current = line
	speaker.held_line = line
	_held_lines[line] = true
	if timed:
		var marks := LineMarks.new()
		marks.line = line
		marks.has_audio = true
		marks.first_frame = speaker.frames_received
		speaker.marks.append(marks)
	_queue_samples(speaker, line, held.samples)


#endregion


## One character's playback: a player fed through an AudioStreamGenerator.
class Speaker:
	var name: String
	## An AudioStreamPlayer, AudioStreamPlayer2D or AudioStreamPlayer3D.
	var player: Node
	var playback: AudioStreamGeneratorPlayback
	var sample_rate: int = 0
	## The line whose audio is accepted; -1 between lines and after a local skip.
	var current: int = -1
	## Samples received (or held) but not yet pushed, oldest first; the first from
	## [member pending_offset] on.
	var pending: Array = []
	var pending_offset: int = 0
	var paused: bool = false
	## Frames received for the current playback (pushed or pending), and pushed into it.
	var frames_received: int = 0
	var frames_pushed: int = 0
	## Frames the playback's buffer holds when full: measured when it is made, empty.
	var buffer_frames: int = 0
	## The last line whose audio was queued, and where its first sample is among the frames
	## of the playback (as for [member LineMarks.first_frame]).
	var first_line: int = -1
	var first_frame: int = 0
	## The current line when it plays from held audio: the server's audio of it is not queued.
	var held_line: int = -1
	## Marks of the lines still to be heard, oldest first (one line at a time, in practice:
	## the server starts a speaker's next line after the last one's finished).
	var marks: Array = []
	## The last viseme emitted for this speaker; empty before the first.
	var viseme: String = ""


## One line's word and viseme marks, emitted as its playback reaches them.
class LineMarks:
	var line: int
	## False until the line's first audio arrives.
	var has_audio: bool = false
	## Where the line's first sample is among the frames of its speaker's playback.
	var first_frame: int = 0
	## [start, length, start_char, end_char] per word, [start, length, viseme] per mouth shape;
	## in samples from the line's first.
	var words: Array = []
	var visemes: Array = []
	## How many words and mouth shapes the playback has reached.
	var next_word: int = 0
	var next_viseme: int = 0
	## The characters of the last word emitted.
	var last_start: int = -1
	var last_end: int = -1
