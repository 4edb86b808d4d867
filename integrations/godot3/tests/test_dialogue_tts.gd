extends SceneTree
## Headless test of the Godot 3 dialogue-tts addon, run by tests/test_godot.py:
##
##     godot3-server --path PROJECT -s res://tests/test_dialogue_tts.gd
##
## PROJECT holds this folder as tests/ and the addon as addons/dialogue_tts/. Environment:
## DIALOGUE_TTS_VECTORS (path of protocol/vectors.json), DIALOGUE_TTS_PORT (a running server),
## DIALOGUE_TTS_DEAD_PORT (a port where no server listens), DIALOGUE_TTS_TOKEN_PORT (a server
## started with a token and a cast with the speaker "guard", style "stern", and the shared
## style "whisper") and DIALOGUE_TTS_TOKEN (its token, which the addon reads by itself).
## Prints one GODOT_TEST_FAIL line per failed check, then GODOT_TEST_OK n_checks=N (exit 0) or
## GODOT_TEST_FAILED (exit 1).

const MsgPack = preload("res://addons/dialogue_tts/msgpack.gd")
const FrameReader = preload("res://addons/dialogue_tts/frame_reader.gd")
const DialogueTTS = preload("res://addons/dialogue_tts/dialogue_tts.gd")
const Transport = preload("res://addons/dialogue_tts/transport.gd")
const TcpTransport = preload("res://addons/dialogue_tts/tcp_transport.gd")

## Quits with a failure if the test is still running then (a hang guard, not a timing check).
const WATCHDOG_SECONDS: float = 120.0
## JSON has one number type; these are the protocol's only float fields (at any depth).
const FLOAT_FIELDS: Array = ["rate", "pitch", "volume", "duration", "gap", "pause"]
const FRAMING_ERRORS: Array = ["invalid_frame", "invalid_message", "frame_too_large"]
const LONG_TEXT: String = (
	"This is a long line of dialogue, long enough that it is still being spoken when the "
	+ "player decides to skip it, and then it goes on for a while longer anyway."
)
## A line with timings, its RichTextLabel markup included, and the words it slices into.
const MARKED_TEXT: String = (
	"[b]Halt![/b] Who goes there, [i]stranger[/i]? The gates closed at sundown, so state "
	+ "your business."
)
const MARKED_WORDS: Array = [
	"Halt",
	"Who",
	"goes",
	"there",
	"stranger",
	"The",
	"gates",
	"closed",
	"at",
	"sundown",
	"so",
	"state",
	"your",
	"business"
]
const NEXT_TEXT: String = "Move along, then."

var _checks: int = 0
var _failures: int = 0
var _elapsed: float = 0.0
var _done: bool = false
var _events: Array = []  # one Dictionary per DialogueTTS signal, in order
var _refusals: Array = []  # the same, for the node that the token server refuses


func _initialize() -> void:
	_run()


func _idle(delta: float) -> bool:
	_elapsed += delta
	if not _done and _elapsed > WATCHDOG_SECONDS:
		_check(false, "watchdog: still running after %d s" % WATCHDOG_SECONDS)
		_finish()
	return false


func _run() -> void:
	var vectors: Dictionary = _load_vectors(OS.get_environment("DIALOGUE_TTS_VECTORS"))
	if not vectors.empty():
		_test_message_vectors(vectors, "requests")
		_test_message_vectors(vectors, "events")
		_test_bad_frames(vectors)
		_test_stream(vectors)
	var ports: Array = []  # dead, plain, token
	for name in ["DIALOGUE_TTS_DEAD_PORT", "DIALOGUE_TTS_PORT", "DIALOGUE_TTS_TOKEN_PORT"]:
		var port: String = OS.get_environment(name)
		if _check(port.is_valid_integer(), name + " is set"):
			ports.append(int(port))
	if ports.size() == 3:
		# Refused first, checked last: in between, a node that retried would have had many
		# seconds to reconnect (and the server counts the hellos it refuses).
		var refused: Node = yield(_start_refused(ports[2]), "completed")
		yield(_test_no_server(ports[0], ports[1]), "completed")
		yield(_test_wire_order(ports[1]), "completed")
		yield(_test_addon(ports[1]), "completed")
		yield(_test_timings(ports[1]), "completed")
		yield(_test_prepare(ports[1]), "completed")
		yield(_test_token_and_cast(ports[2]), "completed")
		_check_refused(refused)
	_finish()


# --- protocol vectors ------------------------------------------------------------------------


func _load_vectors(path: String) -> Dictionary:
	var file := File.new()
	if not _check(file.open(path, File.READ) == OK, "open vectors " + path):
		return {}
	var parsed := JSON.parse(file.get_as_text())
	file.close()
	_check(parsed.error == OK, "vectors.json parses")
	return parsed.result if parsed.error == OK else {}


## Every vector frame decodes to its message, and the message encodes to exactly the frame.
func _test_message_vectors(vectors: Dictionary, section: String) -> void:
	var codec := MsgPack.new()
	for vector in vectors[section]:
		var frame: PoolByteArray = _hex_to_bytes(vector["frame_hex"])
		var expected = _from_json(vector["message"], "")
		var reader := FrameReader.new()
		reader.feed(frame)
		var decoded: Dictionary = reader.next_message()
		_check(
			_same(decoded, expected), "%s/%s decodes: got %s" % [section, vector["name"], decoded]
		)
		_check(reader.next_message().empty(), "%s/%s is one frame" % [section, vector["name"]])
		var encoded: String = codec.encode_frame(expected).hex_encode()
		_check(
			encoded == vector["frame_hex"],
			"%s/%s encodes: got %s" % [section, vector["name"], encoded]
		)


## Framing errors are reported with the vector's code; the other bad frames are well-formed
## maps whose error is for the server to find (unknown type, bad field...).
func _test_bad_frames(vectors: Dictionary) -> void:
	for vector in vectors["bad_frames"]:
		var reader := FrameReader.new()
		reader.max_frame = 1024 * 1024  # the server's limit, which frame_too_large is about
		reader.feed(_hex_to_bytes(vector["frame_hex"]))
		var message: Dictionary = reader.next_message()
		var what: String = "bad_frames/" + vector["name"]
		if vector["error"] in FRAMING_ERRORS:
			_check(message.empty(), what + " yields no message")
			_check(
				reader.error_code == vector["error"],
				"%s: error %s, expected %s" % [what, reader.error_code, vector["error"]]
			)
			_check(reader.fatal == bool(vector.get("closes", false)), what + " fatal flag")
		else:
			_check(reader.error_code == "", what + " is a valid frame: " + reader.error_message)
			_check(message.get("type") is String, what + " decodes to a map with a type")


## The stream decodes to the same messages whole, split at every given offset list, and fed
## one byte at a time.
func _test_stream(vectors: Dictionary) -> void:
	var stream: Dictionary = vectors["stream"]
	var bytes: PoolByteArray = _hex_to_bytes(stream["hex"])
	var expected: Array = []
	for name in stream["names"]:
		for vector in vectors["requests"]:
			if vector["name"] == name:
				expected.append(_from_json(vector["message"], ""))
	_check(expected.size() == stream["names"].size(), "stream names are request vectors")
	var whole: Array = _read_pieces(bytes, [])
	_check(_same(whole, expected), "stream fed whole: %d messages" % whole.size())
	for splits in stream["splits"]:
		var offsets: Array = []
		for offset in splits:
			offsets.append(int(offset))
		_check(_same(_read_pieces(bytes, offsets), expected), "stream split at %s" % [offsets])
	var every_byte: Array = []
	for i in range(1, bytes.size()):
		every_byte.append(i)
	_check(_same(_read_pieces(bytes, every_byte), expected), "stream fed byte by byte")


## Feeds [param bytes] cut at [param offsets], reading messages after every piece.
func _read_pieces(bytes: PoolByteArray, offsets: Array) -> Array:
	var reader := FrameReader.new()
	var messages: Array = []
	var start: int = 0
	for end in offsets + [bytes.size()]:
		if end > start:
			reader.feed(bytes.subarray(start, end - 1))
		start = end
		var message: Dictionary = reader.next_message()
		while not message.empty():
			messages.append(message)
			message = reader.next_message()
		_check(reader.error_code == "", "no error reading a piece: " + reader.error_message)
	return messages


# --- against a real server ---------------------------------------------------------------------


## With no server, the node says so with a signal, and spoken lines end with "error"; then
## it connects to a real one.
func _test_no_server(dead_port: int, port: int) -> void:
	var tts: Node = _new_tts()
	tts.connect_to_server("127.0.0.1", dead_port)
	while _named("disconnected").empty():
		yield(self, "idle_frame")
	var reason: String = _named("disconnected")[0]["reason"]
	_check("no dialogue-tts server" in reason, "disconnected reason: " + reason)
	_check(not tts.is_server_ready(), "not ready without a server")
	var line: int = tts.speak("nobody", "Is anyone there?")
	while _finished(line).empty():
		yield(self, "idle_frame")
	_check(_finished(line)[0]["status"] == "error", "a line spoken offline ends with error")
	_check(_has_event("error", "code", "not_connected"), "error signal for the offline line")
	tts.connect_to_server("127.0.0.1", port)
	while _named("connected").empty():
		yield(self, "idle_frame")
	_check(tts.is_server_ready(), "connects after a failed attempt")
	var back: int = tts.speak("nobody", "Back online.")
	while _finished(back).empty():
		yield(self, "idle_frame")
	_check(_status(back) == "done", "a line spoken once connected is voiced")
	tts.queue_free()
	yield(self, "idle_frame")
	_events.clear()


## The raw protocol through StreamPeerTCP and the frame reader: a skip's reply order, and
## finished.samples matching the audio received.
func _test_wire_order(port: int) -> void:
	var tcp := StreamPeerTCP.new()
	_check(tcp.connect_to_host("127.0.0.1", port) == OK, "raw connect")
	while tcp.get_status() == StreamPeerTCP.STATUS_CONNECTING:
		yield(self, "idle_frame")
	_check(tcp.get_status() == StreamPeerTCP.STATUS_CONNECTED, "raw connected")
	var codec := MsgPack.new()
	var requests: Array = [
		{"type": "hello", "protocol": 1, "client": "godot3-test", "id": 1},
		{"type": "say", "id": 2, "speaker": "guard", "text": LONG_TEXT, "format": "f32le"},
		{"type": "say", "id": 3, "speaker": "guard", "text": "Move along.", "format": "f32le"},
	]
	for request in requests:
		tcp.put_data(codec.encode_frame(request))
	var reader := FrameReader.new()
	var received: Array = []  # every message, in order
	var samples: Dictionary = {}  # line -> samples received in audio events
	var skip_sent: bool = false
	var finished_count: int = 0
	while finished_count < 2:
		yield(self, "idle_frame")
		var available: int = tcp.get_available_bytes()
		if available > 0:
			reader.feed(tcp.get_partial_data(available)[1])
		var message: Dictionary = reader.next_message()
		while not message.empty():
			received.append(message)
			if message["type"] == "audio":
				var line: int = message["line"]
				samples[line] = samples.get(line, 0) + message["data"].size() / 4
				if not skip_sent:
					tcp.put_data(codec.encode_frame({"type": "skip", "id": 4, "speaker": "guard"}))
					skip_sent = true
			elif message["type"] == "finished":
				finished_count += 1
			message = reader.next_message()
		_check(reader.error_code == "", "raw read without framing errors")
	tcp.disconnect_from_host()
	var types: Array = []
	for message in received:
		types.append(message["type"])
	_check(types[0] == "welcome", "raw: welcome first")
	var finished_first: int = _index_of(received, {"type": "finished", "line": 1})
	_check(finished_first >= 0, "raw: line 1 finished")
	if finished_first >= 0 and finished_first + 2 < received.size():
		var first: Dictionary = received[finished_first]
		_check(first["status"] == "skipped", "raw: line 1 status skipped")
		_check(first["samples"] == samples.get(1, 0), "raw: line 1 samples match its audio")
		var reply: Dictionary = received[finished_first + 1]
		_check(reply["type"] == "skipped" and reply["line"] == 1, "raw: then skipped reply")
		var next: Dictionary = received[finished_first + 2]
		_check(next["type"] == "started" and next["line"] == 2, "raw: then line 2 started")
	var finished_second: int = _index_of(received, {"type": "finished", "line": 2})
	if _check(finished_second > finished_first, "raw: line 2 finished after line 1"):
		var second: Dictionary = received[finished_second]
		_check(second["status"] == "done", "raw: line 2 done")
		_check(second["samples"] == samples.get(2, -1), "raw: line 2 samples match its audio")
		_check(second["samples"] > 0, "raw: line 2 has audio")
	for index in range(finished_first + 1, received.size()):
		var message: Dictionary = received[index]
		_check(
			not (message["type"] == "audio" and message["line"] == 1),
			"raw: no audio of line 1 after its finished"
		)


## The addon itself: two speakers, skip, cancel, clear, pause/resume, interrupt, errors.
func _test_addon(port: int) -> void:
	var tts: Node = _new_tts()
	tts.connect_to_server("127.0.0.1", port)
	while _named("connected").empty():
		yield(self, "idle_frame")
	_check(tts.is_server_ready(), "connected")
	var voices: Array = tts.get_voices()
	_check(voices.size() > 0 and int(voices[0]["sample_rate"]) > 0, "voices: %s" % [voices])

	# Two characters talk at once; Alice's first line is skipped while it plays.
	var alice_1: int = tts.speak("alice", LONG_TEXT)
	var alice_2: int = tts.speak("alice", "Sorry, I will keep it short.")
	var bob_1: int = tts.speak("bob", "Hello Alice, nice to meet you.")
	_check(tts.is_speaking("alice") and tts.is_speaking(), "speaking once lines are queued")
	while _audio(alice_1).empty():
		yield(self, "idle_frame")
	var alice: Object = tts._speakers["alice"]
	var playback_before: Object = alice.playback
	tts.skip("alice")
	var skip_mark: int = _events.size()
	_check(alice.pending.empty(), "skip drops pending audio at once")
	_check(alice.playback != playback_before, "skip replaces the generator playback (empty)")
	_check(alice.playback.get_frames_available() > 0, "the new playback has room")
	while _finished(alice_2).empty() or _finished(bob_1).empty():
		yield(self, "idle_frame")
	_check(_status(alice_1) == "skipped", "alice 1 skipped")
	_check(_status(alice_2) == "done", "alice 2 done")
	_check(_status(bob_1) == "done", "bob 1 done")
	for line in [alice_1, alice_2, bob_1]:
		_check_line_order(line)
	_check(_audio(alice_2).size() > 0 and _audio(bob_1).size() > 0, "audio for both speakers")
	for event in _events.slice(skip_mark, _events.size() - 1):
		_check(
			not (event["name"] == "audio_received" and event["line"] == alice_1),
			"no audio_received for a skipped line after skip()"
		)
	var alice_2_started: int = _events.find(_named("line_started", alice_2)[0])
	_check(alice_2_started > _events.find(_finished(alice_1)[0]), "alice 2 starts after 1 ends")
	var bob: Object = tts._speakers["bob"]
	_check(bob.player is AudioStreamPlayer, "bob has an AudioStreamPlayer")
	var rate: int = -1
	for voice in voices:
		if voice["name"] == tts._welcome["default_voice"]:
			rate = voice["sample_rate"]
	_check(int(bob.player.stream.mix_rate) == rate, "generator mix_rate = the voice's rate")

	# cancel a queued line, then clear the rest.
	var carol_1: int = tts.speak("carol", LONG_TEXT)
	var carol_2: int = tts.speak("carol", "Second.")
	var carol_3: int = tts.speak("carol", "Third.")
	while _named("line_queued", carol_3).empty():
		yield(self, "idle_frame")
	tts.cancel(carol_2)
	while _finished(carol_2).empty():
		yield(self, "idle_frame")
	tts.clear("carol")
	while _finished(carol_1).empty() or _finished(carol_3).empty():
		yield(self, "idle_frame")
	_check(_status(carol_2) == "cancelled", "cancel ends a queued line as cancelled")
	_check(_status(carol_1) == "cancelled", "clear cancels the current line")
	_check(_status(carol_3) == "cancelled", "clear cancels the queued line")

	# While everyone is paused, a new speaker's line is queued but not started.
	tts.pause()
	var dave_1: int = tts.speak("dave", "I waited for my turn.")
	while _named("line_queued", dave_1).empty():
		yield(self, "idle_frame")
	var resume_mark: int = _events.size()
	_check(_named("line_started", dave_1).empty(), "no start while paused")
	_check(tts._speakers["dave"].paused, "a speaker that appears during pause() is paused")
	tts.resume()
	_check(not tts._speakers["dave"].paused, "resume() unpauses it")
	while _finished(dave_1).empty():
		yield(self, "idle_frame")
	_check(_events.find(_named("line_started", dave_1)[0]) >= resume_mark, "starts after resume")
	_check(_status(dave_1) == "done", "dave 1 done after resume")

	# interrupt skips the current line and starts the new one.
	var erin_1: int = tts.speak("erin", LONG_TEXT)
	while _named("line_started", erin_1).empty():
		yield(self, "idle_frame")
	var erin_2: int = tts.speak("erin", "Never mind.", {"interrupt": true})
	while _finished(erin_2).empty():
		yield(self, "idle_frame")
	_check(_status(erin_1) == "skipped", "interrupt skips the current line")
	_check(_status(erin_2) == "done", "the interrupting line plays")

	# pause(speaker) holds a playing speaker's audio where it is; resume() lets it go on.
	var gina_1: int = tts.speak("gina", LONG_TEXT)
	while _audio(gina_1).empty():
		yield(self, "idle_frame")
	tts.pause("gina")
	var gina: Object = tts._speakers["gina"]
	_check(gina.player.stream_paused, "pause(speaker) pauses its player")
	_check(tts.is_speaking("gina"), "a paused speaker is still speaking")
	yield(self, "idle_frame")
	tts.resume("gina")
	_check(not gina.player.stream_paused, "resume(speaker) unpauses its player")
	tts.skip("gina")
	while _finished(gina_1).empty():
		yield(self, "idle_frame")
	_check(_status(gina_1) == "skipped", "gina 1 skipped after resume")

	# A line the server rejects still ends, with status "error".
	var frank_1: int = tts.speak("frank", "Hello?", {"voice": "no-such-voice"})
	while _finished(frank_1).empty():
		yield(self, "idle_frame")
	_check(_status(frank_1) == "error", "a rejected line ends with error")
	_check(_has_event("error", "code", "unknown_voice"), "error signal unknown_voice")

	for line in [
		alice_1, alice_2, bob_1, carol_1, carol_2, carol_3, dave_1, erin_1, erin_2, gina_1
	]:
		_check(_finished(line).size() == 1, "exactly one line_finished for line %d" % line)
	_check(not tts.is_speaking("frank"), "frank is not speaking")
	while tts.is_speaking():
		yield(self, "idle_frame")
	_check(not tts.is_speaking(), "nobody speaking at the end")
	_check(
		_named("word_reached").empty() and _named("viseme_changed").empty(),
		"no word_reached or viseme_changed without timings"
	)
	_check(bob.pending.empty(), "all of bob's audio went into his AudioStreamGenerator")
	print(
		(
			"GODOT_TEST_INFO audio chunks: alice_2=%d bob_1=%d, samples: bob_1=%d"
			% [_audio(alice_2).size(), _audio(bob_1).size(), _sum_samples(bob_1)]
		)
	)
	tts.queue_free()


## Timings: word_reached slices the text into its words, in order, and viseme_changed names
## mouth shapes, both emitted as the playback reaches them (not as the marks arrive, which is
## long before), never after line_finished; skip drops the rest and closes the mouth.
func _test_timings(port: int) -> void:
	_events.clear()
	var tts: Node = _new_tts()
	tts.timings = ["word", "viseme"]
	tts.connect_to_server("127.0.0.1", port)
	while _named("connected").empty():
		yield(self, "idle_frame")
	var line: int = tts.speak("herald", MARKED_TEXT, {"markup": "bbcode"})
	var marks: Object = null  # the line's marks as the addon received them
	while _finished(line).empty():
		var herald: Object = tts._speakers.get("herald")
		if herald != null and not herald.marks.empty():
			marks = herald.marks[0]
		yield(self, "idle_frame")
	for _i in 30:  # a quiet spell: anything emitted late would show up in it
		yield(self, "idle_frame")
	_check(_status(line) == "done", "timings: the line is voiced")
	var words: Array = _named("word_reached", line)
	if not _check(marks != null and not words.empty(), "timings: marks and words came"):
		tts.queue_free()
		return
	var finished: Dictionary = _finished(line)[0]
	var finished_at: int = _events.find(finished)
	var said: Array = []
	for word in words:
		said.append(MARKED_TEXT.substr(word["start"], word["end"] - word["start"]))
	_check(_same(said, MARKED_WORDS), "timings: words slice the text, in order: %s" % [said])
	var visemes: Array = _named_for("viseme_changed", "herald")
	var shapes: Dictionary = {}
	for event in visemes:
		shapes[event["viseme"]] = true
		_check(event["viseme"] in DialogueTTS.VISEMES, "timings: a viseme: " + event["viseme"])
	_check(shapes.size() >= 4, "timings: several mouth shapes: %s" % [shapes.keys()])
	_check(not visemes.empty() and visemes[-1]["viseme"] == "sil", "timings: the mouth closes")
	for index in range(1, visemes.size()):
		_check(visemes[index]["viseme"] != visemes[index - 1]["viseme"], "timings: changes only")
	for event in words + visemes:
		_check(_events.find(event) < finished_at, "timings: nothing after line_finished")

	# In time with the playback: each word is emitted no earlier than its place in the audio
	# says, counted from the first word (the player cannot hear faster than real time; the
	# slack is generous). The words left when "done" arrives are emitted in its frame.
	var rate: float = float(tts._speakers["herald"].sample_rate)
	var first: Dictionary = words[0]
	var played: int = 0
	var frames: Dictionary = {}
	for word in words:
		if word["frame"] == finished["frame"]:
			continue
		played += 1
		frames[word["frame"]] = true
		var due: float = (_mark_start(marks, word) - _mark_start(marks, first)) * 1000.0 / rate
		var at: int = word["msec"] - first["msec"]
		_check(at >= due * 0.8 - 150.0, "timings: %s at %d ms, due at %d ms" % [word, at, due])
	_check(played * 2 >= words.size(), "timings: most words emitted while playing: %d" % played)
	_check(frames.size() * 2 >= played, "timings: words emitted over many frames")
	var audio: Array = _audio(line)
	var spread: int = words[-1]["msec"] - first["msec"]
	var arrival: int = audio[-1]["msec"] - audio[0]["msec"]
	print(
		(
			(
				"GODOT_TEST_INFO timings: %d words, %d emitted while playing, in %d frames; first word"
				+ " %d ms after the first audio arrived, last word %d ms after the first; all audio"
				+ " arrived within %d ms; line of %d ms; %d viseme changes"
			)
			% [
				words.size(),
				played,
				frames.size(),
				first["msec"] - audio[0]["msec"],
				spread,
				arrival,
				_sum_samples(line) * 1000 / int(rate),
				visemes.size(),
			]
		)
	)

	# A line that asks for none ("timings": []) gets no signals.
	var mark: int = _events.size()
	var quiet: int = tts.speak("herald", "Quiet now.", {"timings": []})
	while _finished(quiet).empty():
		yield(self, "idle_frame")
	_check(_status(quiet) == "done", "timings: a line without timings is voiced")
	_check(_signals_since(mark, "herald").empty(), "timings: none for a line without them")

	# Skipped while it plays: the rest of its words are dropped and the mouth closes at once;
	# the next line (words only) is timed from its own start, in the new playback.
	var long_line: int = tts.speak("herald", LONG_TEXT)
	var next: int = tts.speak("herald", NEXT_TEXT, {"timings": ["word"]})
	while _named("word_reached", long_line).empty():
		yield(self, "idle_frame")
	tts.skip("herald")
	var skipped_at: int = _events.size()
	var before: Array = _signals_since(mark, "herald")
	_check(before[-1].get("viseme") == "sil", "timings: skip closes the mouth at once")
	while _finished(next).empty():
		yield(self, "idle_frame")
	_check(_status(long_line) == "skipped", "timings: the long line is skipped")
	_check(_status(next) == "done", "timings: the next line is voiced")
	var next_words: Array = []
	for event in _signals_since(skipped_at, "herald"):
		_check(event.get("line") == next, "timings: after skip, only the next line's words")
		next_words.append(NEXT_TEXT.substr(event["start"], event["end"] - event["start"]))
	_check(_same(next_words, ["Move", "along", "then"]), "timings: next: %s" % [next_words])
	tts.queue_free()


## The sample where the mark of [param word] (a recorded word_reached) starts.
func _mark_start(marks: Object, word: Dictionary) -> int:
	for mark in marks.words:
		if mark[2] == word["start"] and mark[3] == word["end"]:
			return mark[0]
	return -1


## Returns the recorded events called [param name] about [param speaker].
func _named_for(name: String, speaker: String) -> Array:
	var found: Array = []
	for event in _named(name):
		if event.get("speaker") == speaker:
			found.append(event)
	return found


## Returns the word_reached events, and [param speaker]'s viseme_changed events, recorded from
## index [param start] on.
func _signals_since(start: int, speaker: String) -> Array:
	var found: Array = []
	for index in range(start, _events.size()):
		var event: Dictionary = _events[index]
		if event["name"] == "word_reached":
			found.append(event)
		elif event["name"] == "viseme_changed" and event["speaker"] == speaker:
			found.append(event)
	return found


## A server started with a token accepts the addon that reads it from DIALOGUE_TTS_TOKEN;
## style, pitch and sample_rate reach it; a cast sent in the hello replaces the server's.
func _test_token_and_cast(port: int) -> void:
	_events.clear()
	var tts: Node = _new_tts()  # no token set: the addon reads DIALOGUE_TTS_TOKEN
	tts.connect_to_server("127.0.0.1", port)
	while _named("connected").empty():
		yield(self, "idle_frame")
	_check(tts.is_server_ready(), "token: accepted with the token from DIALOGUE_TTS_TOKEN")
	# The server's cast has the guard's style "stern" and everyone's "whisper".
	var stern: int = tts.speak("guard", "Halt.", {"style": "stern", "pitch": 1.2})
	var whisper: int = tts.speak("thief", "Psst.", {"style": "whisper", "sample_rate": 16000})
	var unknown: int = tts.speak("thief", "Hm?", {"style": "shouting"})
	var too_high: int = tts.speak("thief", "Hm?", {"pitch": 3.0})
	for line in [stern, whisper, unknown, too_high]:
		while _finished(line).empty():
			yield(self, "idle_frame")
	_check(_status(stern) == "done", "a line with a speaker's style and a pitch is voiced")
	_check(_status(whisper) == "done", "a line with a shared style is voiced")
	var mix_rate: int = int(tts._speakers["thief"].player.stream.mix_rate)
	_check(mix_rate == 16000, "sample_rate reaches the server: generator at %d Hz" % mix_rate)
	# At 8 kHz a generator holds 4095 frames, less than one 4096-sample chunk from the server:
	# chunks go in in pieces, so all of the line's audio gets into the generator.
	var low: int = tts.speak(
		"scout", "The bridge is down, so we go round by the ford.", {"sample_rate": 8000}
	)
	while _finished(low).empty():
		yield(self, "idle_frame")
	var scout: Object = tts._speakers["scout"]
	var deadline: int = OS.get_ticks_msec() + 20000  # only so that a stall fails, not hangs
	while not scout.pending.empty() and OS.get_ticks_msec() < deadline:
		yield(self, "idle_frame")
	_check(_status(low) == "done" and _sum_samples(low) > 8192, "an 8 kHz line is voiced")
	_check(
		scout.pending.empty() and scout.frames_pushed == scout.frames_received,
		(
			"8 kHz: every frame went into the generator (%d of %d)"
			% [scout.frames_pushed, scout.frames_received]
		)
	)
	# The server checks what it gets: so style and pitch were sent.
	_check(_status(unknown) == "error", "a style the cast does not have ends with error")
	_check(_has_event("error", "code", "unknown_style"), "error signal unknown_style")
	_check(_status(too_high) == "error", "a pitch out of the server's range ends with error")
	_check(_has_event("error", "code", "invalid_field"), "error signal invalid_field")
	tts.queue_free()

	# The game's own cast, from a TOML file, replaces the server's for its connection.
	_events.clear()  # line ids start again at 1 on every node
	var from_file: Node = _new_tts()
	from_file.cast_file = "res://tests/cast.toml"
	from_file.connect_to_server("127.0.0.1", port)
	while _named("connected").empty():
		yield(self, "idle_frame")
	var angry: int = from_file.speak("guard", "Stop right there!", {"style": "angry"})
	var stern_gone: int = from_file.speak("guard", "Halt.", {"style": "stern"})
	for line in [angry, stern_gone]:
		while _finished(line).empty():
			yield(self, "idle_frame")
	_check(_status(angry) == "done", "cast_file: its style is voiced")
	_check(_status(stern_gone) == "error", "cast_file: the server's cast no longer applies")
	from_file.queue_free()

	# The same from a Dictionary.
	_events.clear()
	var from_dict: Node = _new_tts()
	from_dict.cast = {"styles": {"sad": {"rate": 0.8, "pitch": 0.9}}}
	from_dict.connect_to_server("127.0.0.1", port)
	while _named("connected").empty():
		yield(self, "idle_frame")
	var sad: int = from_dict.speak("widow", "Oh.", {"style": "sad", "pitch": 0.95})
	while _finished(sad).empty():
		yield(self, "idle_frame")
	_check(_status(sad) == "done", "cast Dictionary: its style is voiced")
	from_dict.queue_free()


## prepare(), then speak() of the same line with the same options: the line's audio, fetched
## from the server's cache of prepared lines, is held and starts in speak() itself, and the
## say is served from that cache too (its status counts two hits more), words and all. Said
## with other options, it is not the prepared line. A lookahead list replaced by a newer one
## prepares none of its lines that were still waiting.
func _test_prepare(port: int) -> void:
	_events.clear()
	var tts: Node = _new_tts()
	tts.timings = ["word"]
	tts.connect_to_server("127.0.0.1", port)
	while _named("connected").empty():
		yield(self, "idle_frame")
	var options: Dictionary = {"markup": "bbcode", "rate": 1.1}
	var hits: int = yield(_cache_hits(port), "completed")
	tts.prepare("iris", MARKED_TEXT, options)
	while _named("line_prepared").empty():
		yield(self, "idle_frame")
	var prepared: Dictionary = _named("line_prepared")[0]
	_check(prepared["text"] == MARKED_TEXT, "prepare: line_prepared names the line")
	_check(prepared["seconds"] > 1.0, "prepare: its length: %s s" % prepared["seconds"])
	var line: int = tts.speak("iris", MARKED_TEXT, options)
	_check(tts.is_line_held(line), "prepare: the line starts from its held audio")
	_check(tts._speakers["iris"].frames_pushed > 0, "prepare: pushed in speak() itself")
	while _finished(line).empty():
		yield(self, "idle_frame")
	_check(_status(line) == "done", "prepare: the prepared line is voiced")
	_check(tts._speakers["iris"].frames_pushed > 0, "prepare: its audio went into the generator")
	_check(_named("word_reached", line).size() == MARKED_WORDS.size(), "prepare: with its words")
	var hits_after: int = yield(_cache_hits(port), "completed")
	_check(hits_after == hits + 2, "prepare: from the cache (hits %d -> %d)" % [hits, hits_after])
	var other: int = tts.speak("iris", MARKED_TEXT, {"markup": "bbcode", "rate": 1.3})
	while _finished(other).empty():
		yield(self, "idle_frame")
	var hits_other: int = yield(_cache_hits(port), "completed")
	_check(hits_other == hits_after, "prepare: another rate is not the prepared line")

	var stale: Array = []
	for index in 6:
		stale.append({"speaker": "iris", "text": "Stale line %d, never said." % index})
	tts.lookahead(stale)
	while tts._prepares_sent.empty():
		yield(self, "idle_frame")
	_check(tts._prepares_sent.size() == DialogueTTS.MAX_PREPARES, "lookahead: a few in flight")
	tts.lookahead([{"speaker": "iris", "text": "The path changed.", "options": options}])
	while (
		not tts._prepares_sent.empty()
		or not tts._lookahead.empty()
		or not tts._held.fetches.empty()
	):
		yield(self, "idle_frame")
	var texts: Array = []
	for event in _named("line_prepared"):
		texts.append(event["text"])
	texts.sort()
	var expected: Array = [MARKED_TEXT, "The path changed."]
	for index in DialogueTTS.MAX_PREPARES:
		expected.append(stale[index]["text"])
	expected.sort()
	_check(_same(texts, expected), "lookahead: no stale line beyond those in flight: %s" % [texts])
	tts.queue_free()


## Returns how many lines the server has said from its cache of prepared lines, asked over
## a connection of the test's own: the addon sends no status request.
func _cache_hits(port: int) -> int:
	yield(self, "idle_frame")  # so that callers can always wait for "completed"
	var transport := TcpTransport.new()
	var codec := MsgPack.new()
	var reader := FrameReader.new()
	transport.open("127.0.0.1", port)
	while transport.poll() == Transport.Status.CONNECTING:
		yield(self, "idle_frame")
	var requests: PoolByteArray = codec.encode_frame(
		{"type": "hello", "protocol": DialogueTTS.PROTOCOL_VERSION, "client": "status", "id": 1}
	)
	requests.append_array(codec.encode_frame({"type": "status", "id": 2}))
	transport.send(requests)
	while transport.poll() == Transport.Status.OPEN:
		reader.feed(transport.receive())
		var message: Dictionary = reader.next_message()
		while not message.empty():
			if message["type"] == "status":
				transport.close()
				return message["cache"]["memory"]["hits"]
			message = reader.next_message()
		yield(self, "idle_frame")
	_check(false, "status: the server answered")
	return -1


## Starts a node with a wrong token, left to reconnect by itself, and waits for its refusal.
func _start_refused(port: int) -> Node:
	var tts: Node = DialogueTTS.new()
	tts.auto_connect = false
	root.add_child(tts)
	tts.connect("connected", self, "_on_refused_signal", ["connected"])
	tts.connect("disconnected", self, "_on_refused_signal", ["disconnected"])
	tts.connect("error", self, "_on_refused_error")
	tts.token = "wrong-token"  # wins over DIALOGUE_TTS_TOKEN
	tts.auto_connect = true
	tts.connect_to_server("127.0.0.1", port)
	while _refusals.size() < 2:
		yield(self, "idle_frame")
	return tts


## The refused node reported it once, and never connected again.
func _check_refused(tts: Node) -> void:
	var names: Array = []
	for event in _refusals:
		names.append(event["name"])
	_check(
		_same(names, ["error", "disconnected"]),
		"refused: one error, one disconnected: %s" % [names]
	)
	_check(_refusals[0].get("code") == "unauthorized", "refused: code %s" % _refusals[0])
	var reason: String = _refusals[1]["detail"]
	_check("DIALOGUE_TTS_TOKEN" in reason, "refused: the reason says what to fix: " + reason)
	_check(not tts.is_server_ready(), "refused: not connected")
	tts.queue_free()


## queued, started, first audio (for played lines) and finished come in that order.
func _check_line_order(line: int) -> void:
	var queued: int = _events.find(_first("line_queued", line))
	var started: int = _events.find(_first("line_started", line))
	var audio: int = _events.find(_first("audio_received", line))
	var finished: int = _events.find(_first("line_finished", line))
	_check(queued >= 0 and queued < started, "line %d: queued before started" % line)
	_check(audio < 0 or started < audio, "line %d: started before audio" % line)
	_check(finished > max(started, audio), "line %d: finished last" % line)


# --- the recorder ------------------------------------------------------------------------------


func _new_tts() -> Node:
	var tts: Node = DialogueTTS.new()
	tts.auto_connect = false
	root.add_child(tts)
	tts.connect("connected", self, "_on_connected")
	tts.connect("disconnected", self, "_on_disconnected")
	tts.connect("line_queued", self, "_on_line_queued")
	tts.connect("line_started", self, "_on_line_started")
	tts.connect("audio_received", self, "_on_audio_received")
	tts.connect("line_finished", self, "_on_line_finished")
	tts.connect("error", self, "_on_error")
	tts.connect("word_reached", self, "_on_word_reached")
	tts.connect("viseme_changed", self, "_on_viseme_changed")
	tts.connect("line_prepared", self, "_on_line_prepared")
	return tts


func _on_connected(server: String) -> void:
	_events.append({"name": "connected", "server": server})


func _on_disconnected(reason: String) -> void:
	_events.append({"name": "disconnected", "reason": reason})


func _on_line_queued(line: int, speaker: String, position: int) -> void:
	_events.append({"name": "line_queued", "line": line, "speaker": speaker, "position": position})


func _on_line_started(line: int, speaker: String) -> void:
	_events.append({"name": "line_started", "line": line, "speaker": speaker})


func _on_audio_received(line: int, speaker: String, samples: PoolRealArray) -> void:
	_check(samples.size() > 0, "audio chunk of line %d has samples" % line)
	_record({"name": "audio_received", "line": line, "speaker": speaker, "samples": samples.size()})


func _on_line_finished(line: int, speaker: String, status: String) -> void:
	_record({"name": "line_finished", "line": line, "speaker": speaker, "status": status})


func _on_word_reached(line: int, start_char: int, end_char: int) -> void:
	_record({"name": "word_reached", "line": line, "start": start_char, "end": end_char})


func _on_viseme_changed(speaker: String, viseme: String) -> void:
	_record({"name": "viseme_changed", "speaker": speaker, "viseme": viseme})


func _on_line_prepared(speaker: String, text: String, seconds: float) -> void:
	_record({"name": "line_prepared", "speaker": speaker, "text": text, "seconds": seconds})


## Records an event with when it happened: the wall clock and the frame.
func _record(event: Dictionary) -> void:
	event["msec"] = OS.get_ticks_msec()
	event["frame"] = Engine.get_idle_frames()
	_events.append(event)


func _on_error(code: String, message: String) -> void:
	_events.append({"name": "error", "code": code, "message": message})


func _on_refused_signal(detail: String, name: String) -> void:
	_refusals.append({"name": name, "detail": detail})


func _on_refused_error(code: String, message: String) -> void:
	_refusals.append({"name": "error", "code": code, "detail": message})


## Returns the recorded events called [param name] (of [param line] when given).
func _named(name: String, line: int = -1) -> Array:
	var found: Array = []
	for event in _events:
		if event["name"] == name and (line == -1 or event.get("line") == line):
			found.append(event)
	return found


func _first(name: String, line: int):
	var found: Array = _named(name, line)
	return found[0] if not found.empty() else null


func _finished(line: int) -> Array:
	return _named("line_finished", line)


func _audio(line: int) -> Array:
	return _named("audio_received", line)


func _sum_samples(line: int) -> int:
	var total: int = 0
	for event in _audio(line):
		total += event["samples"]
	return total


func _status(line: int) -> String:
	var found: Array = _finished(line)
	return found[0]["status"] if not found.empty() else "(not finished)"


func _has_event(name: String, key: String, value: String) -> bool:
	for event in _named(name):
		if event.get(key) == value:
			return true
	return false


# --- helpers -----------------------------------------------------------------------------------


## Records one check; prints it when it fails. Returns [param ok].
func _check(ok: bool, what: String) -> bool:
	_checks += 1
	if not ok:
		_failures += 1
		print("GODOT_TEST_FAIL: " + what)
	return ok


func _finish() -> void:
	if _done:
		return
	_done = true
	if _failures == 0:
		print("GODOT_TEST_OK n_checks=%d" % _checks)
	else:
		print("GODOT_TEST_FAILED failures=%d n_checks=%d" % [_failures, _checks])
	quit(0 if _failures == 0 else 1)


## The JSON form of a vector message as the decoder returns it: integers as int (JSON parses
## every number as float) and {"$bin": hex} as PoolByteArray.
func _from_json(value, key: String):
	match typeof(value):
		TYPE_REAL:
			return value if key in FLOAT_FIELDS else int(value)
		TYPE_ARRAY:
			var items: Array = []
			for item in value:
				items.append(_from_json(item, ""))
			return items
		TYPE_DICTIONARY:
			if value.size() == 1 and value.has("$bin"):
				return _hex_to_bytes(value["$bin"])
			var result: Dictionary = {}
			for item_key in value:
				result[item_key] = _from_json(value[item_key], item_key)
			return result
	return value


## Deep equality that also compares types (Godot 3 compares Dictionaries by reference, and
## 1 == 1.0 there).
func _same(a, b) -> bool:
	if typeof(a) != typeof(b):
		return false
	match typeof(a):
		TYPE_DICTIONARY:
			return a.size() == b.size() and _same_items(a, b, a.keys())
		TYPE_ARRAY:
			return a.size() == b.size() and _same_items(a, b, range(a.size()))
		TYPE_RAW_ARRAY:
			return a.hex_encode() == b.hex_encode()
	return a == b


func _same_items(a, b, keys: Array) -> bool:
	for key in keys:
		if typeof(b) == TYPE_DICTIONARY and not b.has(key):
			return false
		if not _same(a[key], b[key]):
			return false
	return true


## Index of the first message holding every key/value of [param fields], or -1.
func _index_of(messages: Array, fields: Dictionary) -> int:
	for index in messages.size():
		var matches: bool = true
		for key in fields:
			matches = matches and messages[index].get(key) == fields[key]
		if matches:
			return index
	return -1


func _hex_to_bytes(hex: String) -> PoolByteArray:
	var bytes := PoolByteArray()
	for i in range(0, hex.length(), 2):
		bytes.append("0123456789abcdef".find(hex[i]) * 16 + "0123456789abcdef".find(hex[i + 1]))
	return bytes
