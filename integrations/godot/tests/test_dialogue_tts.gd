extends Node
## Test of the Godot 4 dialogue-tts addon, run by tests/test_godot4.py as a web export in
## headless Chromium, against real servers over WebSocket (the addon's web transport).
##
## Command-line user arguments (the page's ?arg=... parameters): --port (the server's
## WebSocket port), --late-port (where a server is started only once this test asks for it,
## by setting window.phase to "need_server"), --token-port and --token (a server started with
## that token and a cast with the speaker "guard", style "stern"), --bad-port (a fake server
## that sends malformed messages after its welcome), --other-origin-port (a server that does
## not allow this page's origin).
## Prints one GODOT_TEST_FAIL line per failed check, then GODOT_TEST_OK n_checks=N or
## GODOT_TEST_FAILED, then sets window.done.

const MsgPack := preload("res://addons/dialogue_tts/msgpack.gd")
const FrameReader := preload("res://addons/dialogue_tts/frame_reader.gd")
const DialogueTTS := preload("res://addons/dialogue_tts/dialogue_tts.gd")
const Transport := preload("res://addons/dialogue_tts/transport.gd")
const WebSocketTransport := preload("res://addons/dialogue_tts/web_socket_transport.gd")

const VECTORS_PATH: String = "res://tests/vectors.json"
## Fails the test if it is still running then (a hang guard, not a timing check).
const WATCHDOG_SECONDS: float = 240.0
## JSON has one number type; these are the protocol's only float fields (at any depth).
const FLOAT_FIELDS: Array[String] = ["rate", "pitch", "volume", "duration", "gap", "pause"]
const FRAMING_ERRORS: Array[String] = ["invalid_frame", "invalid_message", "frame_too_large"]
const LONG_TEXT: String = (
	"This is a long line of dialogue, long enough that it is still being spoken when the "
	+ "player decides to skip it, and then it goes on for a while longer anyway."
)
## A line with timings, its RichTextLabel markup included, and the words it slices into.
const MARKED_TEXT: String = (
	"[b]Halt![/b] Who goes there, [i]stranger[/i]? The gates closed at sundown, so state "
	+ "your business."
)
const MARKED_WORDS: Array[String] = [
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

var _checks: int = 0
var _failures: int = 0
var _done: bool = false
var _events: Array[Dictionary] = []  # one per DialogueTTS signal, in order
var _refusals: Array[Dictionary] = []  # the same, for the node the token server refuses
var _args: Dictionary = {}
var _streamed: Dictionary = {}  # line id -> the samples the server streamed for it


func _ready() -> void:
	get_tree().create_timer(WATCHDOG_SECONDS).timeout.connect(_on_watchdog)
	for argument: String in OS.get_cmdline_user_args():
		var pair: PackedStringArray = argument.trim_prefix("--").split("=", true, 1)
		_args[pair[0]] = pair[1] if pair.size() == 2 else ""
	_check(OS.has_feature("web"), "runs as a web export")
	var vectors: Variant = JSON.parse_string(FileAccess.get_file_as_string(VECTORS_PATH))
	if _check(vectors is Dictionary, "vectors.json is in the pack"):
		_test_message_vectors(vectors, "requests")
		_test_message_vectors(vectors, "events")
		_test_bad_frames(vectors)
		_test_stream(vectors)
	# Refused first, checked last: in between, a node that retried would have had many
	# seconds to reconnect (and the server counts the hellos it refuses).
	var refused: Node = await _start_refused(_port("token-port"))
	await _test_late_server(_port("late-port"))
	await _test_addon(_port("port"))
	await _test_timings(_port("port"))
	await _test_prepare(_port("port"))
	await _test_held(_port("port"))
	await _test_token_and_low_rate(_port("token-port"))
	await _test_malformed(_port("bad-port"))
	await _test_origin_refused(_port("other-origin-port"))
	_check_refused(refused)
	_finish()


func _port(name: String) -> int:
	var value: String = _args.get(name, "")
	_check(value.is_valid_int(), "--%s is given" % name)
	return value.to_int()


# --- protocol vectors ------------------------------------------------------------------------


## Every vector frame decodes to its message, and the message encodes to exactly the frame.
func _test_message_vectors(vectors: Dictionary, section: String) -> void:
	var codec := MsgPack.new()
	for vector: Dictionary in vectors[section]:
		var frame: PackedByteArray = _hex_to_bytes(vector["frame_hex"])
		var expected: Variant = _from_json(vector["message"], "")
		var reader := FrameReader.new()
		reader.feed(frame)
		var decoded: Dictionary = reader.next_message()
		var what: String = "%s/%s" % [section, vector["name"]]
		_check(_same(decoded, expected), "%s decodes: got %s" % [what, decoded])
		_check(reader.next_message().is_empty(), "%s is one frame" % what)
		var encoded: String = codec.encode_frame(expected).hex_encode()
		_check(encoded == vector["frame_hex"], "%s encodes: got %s" % [what, encoded])


## Framing errors are reported with the vector's code; the other bad frames are well-formed
## maps whose error is for the server to find (unknown type, bad field...).
func _test_bad_frames(vectors: Dictionary) -> void:
	for vector: Dictionary in vectors["bad_frames"]:
		var reader := FrameReader.new()
		reader.max_frame = 1024 * 1024  # the server's limit, which frame_too_large is about
		reader.feed(_hex_to_bytes(vector["frame_hex"]))
		var message: Dictionary = reader.next_message()
		var what: String = "bad_frames/" + vector["name"]
		if vector["error"] in FRAMING_ERRORS:
			_check(message.is_empty(), what + " yields no message")
			_check(reader.error_code == vector["error"], "%s: %s" % [what, reader.error_code])
			_check(reader.fatal == bool(vector.get("closes", false)), what + " fatal flag")
		else:
			_check(reader.error_code == "", what + " is a valid frame: " + reader.error_message)
			_check(message.get("type") is String, what + " decodes to a map with a type")


## The stream decodes to the same messages whole, split at every given offset list, and fed
## one byte at a time.
func _test_stream(vectors: Dictionary) -> void:
	var stream: Dictionary = vectors["stream"]
	var bytes: PackedByteArray = _hex_to_bytes(stream["hex"])
	var expected: Array = []
	for name: String in stream["names"]:
		for vector: Dictionary in vectors["requests"]:
			if vector["name"] == name:
				expected.append(_from_json(vector["message"], ""))
	_check(expected.size() == stream["names"].size(), "stream names are request vectors")
	_check(_same(_read_pieces(bytes, []), expected), "stream fed whole")
	for splits: Array in stream["splits"]:
		var offsets: Array[int] = []
		for offset: float in splits:
			offsets.append(int(offset))
		_check(_same(_read_pieces(bytes, offsets), expected), "stream split at %s" % [offsets])
	var every_byte: Array[int] = []
	for i: int in range(1, bytes.size()):
		every_byte.append(i)
	_check(_same(_read_pieces(bytes, every_byte), expected), "stream fed byte by byte")


## Feeds [param bytes] cut at [param offsets], reading messages after every piece.
func _read_pieces(bytes: PackedByteArray, offsets: Array[int]) -> Array:
	var reader := FrameReader.new()
	var messages: Array = []
	var start: int = 0
	var ends: Array[int] = offsets.duplicate()
	ends.append(bytes.size())
	for end: int in ends:
		if end > start:
			reader.feed(bytes.slice(start, end))
		start = end
		var message: Dictionary = reader.next_message()
		while not message.is_empty():
			messages.append(message)
			message = reader.next_message()
		_check(reader.error_code == "", "no error reading a piece: " + reader.error_message)
	return messages


# --- against real servers --------------------------------------------------------------------


## With no server, the node warns once (one disconnected signal) and lines end with "error";
## once a server starts on that port, the node's own retries connect it.
func _test_late_server(port: int) -> void:
	var tts: Node = _new_tts()
	tts.connect_to_server("127.0.0.1", port)
	tts.auto_connect = true
	while _named("disconnected").is_empty():
		await get_tree().process_frame
	var reason: String = _named("disconnected")[0]["reason"]
	_check("no dialogue-tts server" in reason, "disconnected reason: " + reason)
	_check(not tts.is_server_ready(), "not ready without a server")
	var line: int = tts.speak("nobody", "Is anyone there?")
	while _finished(line).is_empty():
		await get_tree().process_frame
	_check(_status(line) == "error", "a line spoken offline ends with error")
	_check(_has_event("error", "code", "not_connected"), "error signal for the offline line")
	JavaScriptBridge.eval("window.phase = 'need_server'")  # the test starts it now
	while _named("connected").is_empty():
		await get_tree().process_frame
	_check(_named("disconnected").size() == 1, "one disconnected signal for the whole outage")
	_check(tts.is_server_ready(), "connects by itself once the server runs")
	var back: int = tts.speak("nobody", "Back online.")
	while _finished(back).is_empty():
		await get_tree().process_frame
	_check(_status(back) == "done", "a line spoken once connected is voiced")
	tts.queue_free()
	_events.clear()


## The addon itself: two speakers, skip, cancel, clear, pause/resume, interrupt, errors.
func _test_addon(port: int) -> void:
	var tts: Node = await _connected_tts(port)
	var voices: Array = tts.get_voices()
	_check(voices.size() > 0 and int(voices[0]["sample_rate"]) > 0, "voices: %s" % [voices])

	# Two characters talk at once; Alice's first line is skipped while it plays.
	var alice_1: int = tts.speak("alice", LONG_TEXT)
	var alice_2: int = tts.speak("alice", "Sorry, I will keep it short.")
	var bob_1: int = tts.speak("bob", "Hello Alice, nice to meet you.")
	_check(tts.is_speaking("alice") and tts.is_speaking(), "speaking once lines are queued")
	while _audio(alice_1).is_empty():
		await get_tree().process_frame
	var alice: Object = tts._speakers["alice"]
	var playback_before: Object = alice.playback
	tts.skip("alice")
	var skip_mark: int = _events.size()
	_check(alice.pending.is_empty(), "skip drops pending audio at once")
	_check(alice.playback != playback_before, "skip replaces the generator playback (empty)")
	_check(alice.playback.get_frames_available() > 0, "the new playback has room")
	while _finished(alice_2).is_empty() or _finished(bob_1).is_empty():
		await get_tree().process_frame
	_check(_status(alice_1) == "skipped", "alice 1 skipped")
	_check(_status(alice_2) == "done", "alice 2 done")
	_check(_status(bob_1) == "done", "bob 1 done")
	for line: int in [alice_1, alice_2, bob_1]:
		_check_line_order(line)
	_check(_audio(alice_2).size() > 0 and _audio(bob_1).size() > 0, "audio for both speakers")
	for event: Dictionary in _events.slice(skip_mark):
		_check(
			not (event["name"] == "audio_received" and event["line"] == alice_1),
			"no audio_received for a skipped line after skip()"
		)
	var alice_2_started: int = _events.find(_named("line_started", alice_2)[0])
	_check(alice_2_started > _events.find(_finished(alice_1)[0]), "alice 2 starts after 1 ends")
	# Bob overlapped Alice: his line started before hers finished.
	var bob_started: int = _events.find(_named("line_started", bob_1)[0])
	_check(bob_started < _events.find(_finished(alice_2)[0]), "two speakers at once")
	var bob: Object = tts._speakers["bob"]
	_check(bob.player is AudioStreamPlayer, "bob has an AudioStreamPlayer")
	_check(
		bob.player.playback_type == AudioServer.PLAYBACK_TYPE_STREAM,
		"the player streams (a web export's default, samples, cannot play a generator)"
	)
	var rate: int = -1
	for voice: Dictionary in voices:
		if voice["name"] == tts._welcome["default_voice"]:
			rate = voice["sample_rate"]
	_check(int(bob.player.stream.mix_rate) == rate, "generator mix_rate = the voice's rate")
	_check(bob.frames_pushed > 0, "bob's audio went into his generator")

	# cancel a queued line, then clear the rest.
	var carol_1: int = tts.speak("carol", LONG_TEXT)
	var carol_2: int = tts.speak("carol", "Second.")
	var carol_3: int = tts.speak("carol", "Third.")
	while _named("line_started", carol_1).is_empty():
		await get_tree().process_frame
	tts.cancel(carol_2)
	tts.clear("carol")
	while _finished(carol_1).is_empty() or _finished(carol_3).is_empty():
		await get_tree().process_frame
	while _finished(carol_2).is_empty():
		await get_tree().process_frame
	_check(_status(carol_2) == "cancelled", "cancel ends a queued line as cancelled")
	_check(_status(carol_1) == "cancelled", "clear cancels the current line")
	_check(_status(carol_3) == "cancelled", "clear cancels the queued line")

	# While everyone is paused, a new speaker's line is queued but not started.
	tts.pause()
	var dave_1: int = tts.speak("dave", "I waited for my turn.")
	while _named("line_queued", dave_1).is_empty():
		await get_tree().process_frame
	var resume_mark: int = _events.size()
	_check(_named("line_started", dave_1).is_empty(), "no start while paused")
	_check(tts._speakers["dave"].paused, "a speaker that appears during pause() is paused")
	tts.resume()
	_check(not tts._speakers["dave"].paused, "resume() unpauses it")
	while _finished(dave_1).is_empty():
		await get_tree().process_frame
	_check(_events.find(_named("line_started", dave_1)[0]) >= resume_mark, "starts after resume")
	_check(_status(dave_1) == "done", "dave 1 done after resume")

	# interrupt skips the current line and starts the new one.
	var erin_1: int = tts.speak("erin", LONG_TEXT)
	while _named("line_started", erin_1).is_empty():
		await get_tree().process_frame
	var erin_2: int = tts.speak("erin", "Never mind.", {"interrupt": true})
	while _finished(erin_2).is_empty():
		await get_tree().process_frame
	_check(_status(erin_1) == "skipped", "interrupt skips the current line")
	_check(_status(erin_2) == "done", "the interrupting line plays")

	# pause(speaker) holds a playing speaker's audio where it is; resume() lets it go on.
	var gina_1: int = tts.speak("gina", LONG_TEXT)
	while _audio(gina_1).is_empty():
		await get_tree().process_frame
	tts.pause("gina")
	var gina: Object = tts._speakers["gina"]
	_check(gina.player.stream_paused, "pause(speaker) pauses its player")
	_check(tts.is_speaking("gina"), "a paused speaker is still speaking")
	await get_tree().process_frame
	tts.resume("gina")
	_check(not gina.player.stream_paused, "resume(speaker) unpauses its player")
	tts.skip("gina")
	while _finished(gina_1).is_empty():
		await get_tree().process_frame
	_check(_status(gina_1) == "skipped", "gina 1 skipped after resume")

	# A line the server rejects still ends, with status "error".
	var frank_1: int = tts.speak("frank", "Hello?", {"voice": "no-such-voice"})
	while _finished(frank_1).is_empty():
		await get_tree().process_frame
	_check(_status(frank_1) == "error", "a rejected line ends with error")
	_check(_has_event("error", "code", "unknown_voice"), "error signal unknown_voice")

	for line: int in [
		alice_1, alice_2, bob_1, carol_1, carol_2, carol_3, dave_1, erin_1, erin_2, gina_1
	]:
		_check(_finished(line).size() == 1, "exactly one line_finished for line %d" % line)
	while tts.is_speaking():
		await get_tree().process_frame
	_check(not tts.is_speaking(), "nobody speaking at the end")
	_check(
		_named("word_reached").is_empty() and _named("viseme_changed").is_empty(),
		"no word_reached or viseme_changed without timings"
	)
	tts.queue_free()
	_events.clear()


## Timings: word_reached slices the text into its words, in order, and viseme_changed names
## mouth shapes, both emitted as the playback reaches them, never after line_finished; skip
## drops the rest and closes the mouth.
func _test_timings(port: int) -> void:
	var tts: Node = await _connected_tts(port, ["word", "viseme"])
	var line: int = tts.speak("herald", MARKED_TEXT, {"markup": "bbcode"})
	while _finished(line).is_empty():
		await get_tree().process_frame
	for _i: int in 30:  # a quiet spell: anything emitted late would show up in it
		await get_tree().process_frame
	_check(_status(line) == "done", "timings: the line is voiced")
	var words: Array[Dictionary] = _named("word_reached", line)
	var said: Array[String] = []
	for word: Dictionary in words:
		said.append(MARKED_TEXT.substr(word["start"], word["end"] - word["start"]))
	_check(_same(said, MARKED_WORDS), "timings: words slice the text, in order: %s" % [said])
	var visemes: Array[Dictionary] = _named_for("viseme_changed", "herald")
	var shapes: Dictionary = {}
	for event: Dictionary in visemes:
		shapes[event["viseme"]] = true
		_check(event["viseme"] in DialogueTTS.VISEMES, "timings: a viseme: " + event["viseme"])
	_check(shapes.size() >= 4, "timings: several mouth shapes: %s" % [shapes.keys()])
	_check(not visemes.is_empty() and visemes[-1]["viseme"] == "sil", "timings: mouth closes")
	for index: int in range(1, visemes.size()):
		_check(visemes[index]["viseme"] != visemes[index - 1]["viseme"], "timings: changes only")
	var finished_at: int = _events.find(_finished(line)[0])
	for event: Dictionary in words + visemes:
		_check(_events.find(event) < finished_at, "timings: nothing after line_finished")
	var frames: Dictionary = {}
	for word: Dictionary in words:
		frames[word["frame"]] = true
	_check(frames.size() * 2 >= words.size(), "timings: words emitted over many frames")
	print(
		(
			"GODOT_TEST_INFO timings: %d words in %d frames, over %d ms; %d viseme changes"
			% [words.size(), frames.size(), words[-1]["msec"] - words[0]["msec"], visemes.size()]
		)
	)

	# Skipped while it plays: the rest of its words are dropped and the mouth closes at once.
	var long_line: int = tts.speak("herald", LONG_TEXT)
	var next: int = tts.speak("herald", "Move along, then.", {"timings": ["word"]})
	while _named("word_reached", long_line).is_empty():
		await get_tree().process_frame
	tts.skip("herald")
	var skipped_at: int = _events.size()
	_check(_events[-1].get("viseme") == "sil", "timings: skip closes the mouth at once")
	while _finished(next).is_empty():
		await get_tree().process_frame
	_check(_status(long_line) == "skipped", "timings: the long line is skipped")
	_check(_status(next) == "done", "timings: the next line is voiced")
	var next_words: Array[String] = []
	for event: Dictionary in _events.slice(skipped_at):
		if event["name"] == "word_reached":
			_check(event["line"] == next, "timings: after skip, only the next line's words")
			next_words.append(
				"Move along, then.".substr(event["start"], event["end"] - event["start"])
			)
	_check(_same(next_words, ["Move", "along", "then"]), "timings: next: %s" % [next_words])
	tts.queue_free()
	_events.clear()


## prepare(), then speak() of the same line with the same options: the line's audio, fetched
## from the server's cache of prepared lines, is held and starts in speak() itself, and the
## say is served from that cache too (its status counts two hits more), words and all. Said
## with other options, it is not the prepared line. A lookahead list replaced by a newer one
## prepares none of its lines that were still waiting; a line handed over again once
## prepared is not sent again.
func _test_prepare(port: int) -> void:
	var tts: Node = await _connected_tts(port, ["word"])
	var options: Dictionary = {"markup": "bbcode", "rate": 1.1}
	var hits: int = await _cache_hits(port)
	tts.prepare("iris", MARKED_TEXT, options)
	while _named("line_prepared").is_empty():
		await get_tree().process_frame
	var prepared: Dictionary = _named("line_prepared")[0]
	_check(
		prepared["speaker"] == "iris" and prepared["text"] == MARKED_TEXT,
		"prepare: line_prepared names the line: %s" % [prepared]
	)
	_check(prepared["seconds"] > 1.0, "prepare: its length: %s s" % prepared["seconds"])
	var line: int = tts.speak("iris", MARKED_TEXT, options)
	_check(tts.is_line_held(line), "prepare: the line starts from its held audio")
	_check(tts._speakers["iris"].frames_pushed > 0, "prepare: pushed in speak() itself")
	while _finished(line).is_empty():
		await get_tree().process_frame
	_check(_status(line) == "done", "prepare: the prepared line is voiced")
	_check(tts._speakers["iris"].frames_pushed > 0, "prepare: its audio went into the generator")
	_check(_named("word_reached", line).size() == MARKED_WORDS.size(), "prepare: with its words")
	var hits_after: int = await _cache_hits(port)
	_check(
		hits_after == hits + 2,
		"prepare: fetched and said from the server's cache (hits %d -> %d)" % [hits, hits_after]
	)
	var other: int = tts.speak("iris", MARKED_TEXT, {"markup": "bbcode", "rate": 1.3})
	while _finished(other).is_empty():
		await get_tree().process_frame
	var hits_other: int = await _cache_hits(port)
	_check(hits_other == hits_after, "prepare: another rate is not the prepared line")

	# Six lines ahead: MAX_PREPARES go out at once, the rest wait, and are replaced.
	var stale: Array = []
	for index: int in 6:
		stale.append({"speaker": "iris", "text": "Stale line %d, never said." % index})
	tts.lookahead(stale)
	while tts._prepares_sent.is_empty():
		await get_tree().process_frame
	_check(tts._prepares_sent.size() == DialogueTTS.MAX_PREPARES, "lookahead: a few in flight")
	var fresh: Array = [{"speaker": "iris", "text": "The path changed.", "options": options}]
	tts.lookahead(fresh)
	while (
		not tts._prepares_sent.is_empty()
		or not tts._lookahead.is_empty()
		or not tts._held.fetches.is_empty()
	):
		await get_tree().process_frame
	var texts: Array[String] = []
	for event: Dictionary in _named("line_prepared").slice(1):
		texts.append(event["text"])
	texts.sort()
	var expected: Array[String] = ["The path changed."]
	for index: int in DialogueTTS.MAX_PREPARES:
		expected.append(stale[index]["text"])
	expected.sort()
	_check(_same(texts, expected), "lookahead: no stale line beyond those in flight: %s" % [texts])
	tts.lookahead(fresh)  # handed over again: already prepared
	for _i: int in 5:
		await get_tree().process_frame
	_check(tts._prepares_sent.is_empty(), "lookahead: a prepared line is not sent again")
	var said: int = tts.speak("iris", "The path changed.", options)
	_check(tts.is_line_held(said), "lookahead: the fresh line starts from its held audio")
	while _finished(said).is_empty():
		await get_tree().process_frame
	_check(_status(said) == "done", "lookahead: the fresh line is voiced")
	var hits_fresh: int = await _cache_hits(port)
	# The audio of each line prepared was fetched from the cache (the stale ones in flight, the
	# fresh one), and the fresh line said from it.
	var hits_expected: int = hits_other + DialogueTTS.MAX_PREPARES + 2
	_check(hits_fresh == hits_expected, "lookahead: fetched and said from the server's cache")
	tts.queue_free()
	_events.clear()


## A prepared line's audio is held, and its speak() pushes it into the player in that call;
## it is the very audio the server streams for the say, sample for sample. A speak() that
## does not match the prepare (another rate), a speaker with a line playing, clear(), and a
## lookahead() path left behind all keep held audio from playing where it does not belong:
## those lines play the server's audio, and only it. Skip drops a held line's audio at once.
func _test_held(port: int) -> void:
	var tts: Node = await _connected_tts(port)
	tts.audio_received.connect(_on_streamed)
	var texts: Array[String] = [
		"Keep the lantern lit until the boat is past the rocks.",
		"Whatever you hear out there, do not answer it.",
		"The tide turns at midnight.",
	]
	var fast: Dictionary = {"rate": 1.2}
	for text: String in texts:
		tts.prepare("nell", text, fast)
	while _named("line_prepared").size() < texts.size():
		await get_tree().process_frame
	var keys: Array[String] = []
	for text: String in texts:
		keys.append(str(tts._line_request("prepare", "nell", text, fast)))
	_check(tts._held.has(keys[0]) and tts._held.has(keys[1]), "held: prepared lines are held")
	var held: PackedFloat32Array = tts._held._lines[keys[0]].samples
	var line: int = tts.speak("nell", texts[0], fast)
	var nell: Object = tts._speakers["nell"]
	_check(tts.is_line_held(line), "held: the line starts from its held audio")
	_check(
		nell.frames_received == held.size() and nell.frames_pushed > 0,
		"held: pushed into the player in speak() itself (%d pushed)" % nell.frames_pushed
	)
	_check(not tts._held.has(keys[0]), "held: a held line is said once")
	# A speak() of another held line while this one plays waits its turn on the server.
	var queued: int = tts.speak("nell", texts[1], fast)
	_check(not tts.is_line_held(queued), "held: not while the speaker's line plays")
	_check(nell.frames_received == held.size(), "held: nothing pushed for the queued line")
	while _finished(queued).is_empty():
		await get_tree().process_frame
	_check(_status(line) == "done" and _status(queued) == "done", "held: both lines done")
	_check(
		_streamed.get(line) == held,
		"held: its audio is the server's, sample for sample (%d samples)" % held.size()
	)
	_check(not tts.is_line_held(line), "held: only until the line finished")
	print("GODOT_TEST_INFO held: %d samples played from held audio, the server's" % held.size())
	_check(_sum_samples(queued) > 0, "held: the queued line played the server's audio")
	# Another rate: not the prepared line, so its held audio stays out of it.
	var before: int = nell.frames_received
	var other: int = tts.speak("nell", texts[2], {"rate": 1.0})
	_check(not tts.is_line_held(other), "held: another rate does not match")
	_check(nell.frames_received == before, "held: nothing pushed for a line that does not match")
	while _finished(other).is_empty():
		await get_tree().process_frame
	var streamed: PackedFloat32Array = _streamed.get(other, PackedFloat32Array())
	_check(
		nell.frames_received - before == streamed.size() and streamed.size() > 0,
		"held: a line that does not match plays the server's audio, and only it"
	)
	_check(tts._held.has(keys[2]), "held: the prepared line stays held for its own speak()")
	# Skip drops a held line's audio at once, as any line's.
	var skipped: int = tts.speak("nell", texts[1], fast)
	_check(tts.is_line_held(skipped), "held: the line left held by the busy speaker starts")
	tts.skip("nell")
	var after_skip: int = nell.frames_received
	_check(
		nell.pending.is_empty() and after_skip == nell.frames_pushed,
		"held: skip drops its audio at once"
	)
	while _finished(skipped).is_empty():
		await get_tree().process_frame
	# (The server may end it "done": a skip read with the say, before the line started there,
	# finds no current line. Either way, none of its audio plays here after the skip.)
	_check(nell.frames_received == after_skip, "held: nothing of the skipped line plays after")
	# clear() drops held audio; so does a lookahead() path left behind.
	tts.clear()
	_check(not tts._held.has(keys[2]), "held: clear() drops held audio")
	before = nell.frames_received
	var cleared: int = tts.speak("nell", texts[2], fast)
	_check(not tts.is_line_held(cleared), "held: not after clear()")
	_check(nell.frames_received == before, "held: nothing pushed after clear()")
	while _finished(cleared).is_empty():
		await get_tree().process_frame
	_check(_status(cleared) == "done", "held: after clear(), the line plays from the server")
	var ahead: Array = [{"speaker": "nell", "text": "Row, and do not look back.", "options": fast}]
	var ahead_key: String = str(tts._line_request("prepare", "nell", ahead[0]["text"], fast))
	tts.lookahead(ahead)
	while not tts._held.has(ahead_key):
		await get_tree().process_frame
	tts.lookahead([{"speaker": "nell", "text": "The fog lifts."}])
	_check(tts._held.has(ahead_key), "held: lookahead keeps the last path's lines")
	tts.lookahead([])
	_check(not tts._held.has(ahead_key), "held: lookahead drops lines off the path")
	while not tts._held.fetches.is_empty() or not tts._prepares_sent.is_empty():
		await get_tree().process_frame
	_check(
		(
			tts._held.samples_held <= DialogueTTS.HeldAudio.MAX_SAMPLES
			and tts._held._lines.size() <= DialogueTTS.HeldAudio.MAX_LINES
		),
		"held: bounded (%d samples)" % tts._held.samples_held
	)
	tts.queue_free()
	_events.clear()
	_streamed.clear()


## With the right token the server accepts the node and its styles; an 8 kHz line gets all
## its audio into a generator that holds less than one of the server's chunks; a cast file
## sent in the hello replaces the server's cast.
func _test_token_and_low_rate(port: int) -> void:
	var tts: Node = _new_tts()
	tts.token = _args.get("token", "")
	tts.connect_to_server("127.0.0.1", port)
	while _named("connected").is_empty() and _named("disconnected").is_empty():
		await get_tree().process_frame
	_check(tts.is_server_ready(), "token: accepted with the right token")
	var stern: int = tts.speak("guard", "Halt.", {"style": "stern", "pitch": 1.2})
	var low: int = tts.speak(
		"scout", "The bridge is down, so we go round by the ford.", {"sample_rate": 8000}
	)
	for line: int in [stern, low]:
		while _finished(line).is_empty():
			await get_tree().process_frame
	_check(_status(stern) == "done", "token: a line with the cast's style is voiced")
	var scout: Object = tts._speakers["scout"]
	var deadline: int = Time.get_ticks_msec() + 20000  # only so that a stall fails, not hangs
	while not scout.pending.is_empty() and Time.get_ticks_msec() < deadline:
		await get_tree().process_frame
	_check(_status(low) == "done" and _sum_samples(low) > 8192, "an 8 kHz line is voiced")
	_check(int(scout.player.stream.mix_rate) == 8000, "8 kHz: the generator runs at 8 kHz")
	_check(
		scout.pending.is_empty() and scout.frames_pushed == scout.frames_received,
		"8 kHz: every frame went in (%d of %d)" % [scout.frames_pushed, scout.frames_received]
	)
	tts.queue_free()
	_events.clear()

	# The game's own cast, from a TOML file in the pack, replaces the server's for its
	# connection: its "angry" style is voiced, the server's "stern" is gone.
	var from_file: Node = _new_tts()
	from_file.token = _args.get("token", "")
	from_file.cast_file = "res://tests/cast.toml"
	from_file.connect_to_server("127.0.0.1", port)
	while _named("connected").is_empty() and _named("disconnected").is_empty():
		await get_tree().process_frame
	var angry: int = from_file.speak("guard", "Stop right there!", {"style": "angry"})
	var stern_gone: int = from_file.speak("guard", "Halt.", {"style": "stern"})
	for line: int in [angry, stern_gone]:
		while _finished(line).is_empty():
			await get_tree().process_frame
	_check(_status(angry) == "done", "cast_file: its style is voiced")
	_check(_status(stern_gone) == "error", "cast_file: the server's cast no longer applies")
	from_file.queue_free()
	_events.clear()


## Malformed messages from the server are reported with error, and the node carries on.
func _test_malformed(port: int) -> void:
	var tts: Node = await _connected_tts(port)
	while _named("error").size() < 2 or tts.get_voices().is_empty():
		await get_tree().process_frame
		if _named("disconnected").size() > 0:
			break
	_check(_has_event("error", "code", "invalid_frame"), "malformed: invalid_frame reported")
	_check(_has_event("error", "code", "invalid_message"), "malformed: invalid_message reported")
	_check(tts.is_server_ready(), "malformed: still connected")
	_check(tts.get_voices().size() == 1, "malformed: the next good message is read")
	tts.queue_free()
	_events.clear()


## A server that does not allow this page's origin refuses the WebSocket handshake: the node
## reports it as no server (the browser tells no more) and speaks nothing.
func _test_origin_refused(port: int) -> void:
	var tts: Node = _new_tts()
	tts.connect_to_server("127.0.0.1", port)
	while _named("connected").is_empty() and _named("disconnected").is_empty():
		await get_tree().process_frame
	_check(not tts.is_server_ready(), "origin refused: not connected")
	_check(_named("disconnected").size() == 1, "origin refused: disconnected")
	tts.queue_free()
	_events.clear()


## Starts a node with a wrong token, left to reconnect by itself, and waits for its refusal.
func _start_refused(port: int) -> Node:
	var tts: Node = DialogueTTS.new()
	tts.auto_connect = false
	add_child(tts)
	tts.connected.connect(_on_refused_signal.bind("connected"))
	tts.disconnected.connect(_on_refused_signal.bind("disconnected"))
	tts.error.connect(_on_refused_error)
	tts.token = "wrong-token"
	tts.auto_connect = true
	tts.connect_to_server("127.0.0.1", port)
	while _refusals.size() < 2:
		await get_tree().process_frame
	return tts


## The refused node reported it once, and never connected again.
func _check_refused(tts: Node) -> void:
	var names: Array[String] = []
	for event: Dictionary in _refusals:
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


## Returns how many lines the server has said from its cache of prepared lines, asked over
## a connection of the test's own: the addon sends no status request.
func _cache_hits(port: int) -> int:
	var transport := WebSocketTransport.new()
	var codec := MsgPack.new()
	var reader := FrameReader.new()
	transport.open("127.0.0.1", port)
	while transport.poll() == Transport.Status.CONNECTING:
		await get_tree().process_frame
	var requests: PackedByteArray = codec.encode_frame(
		{"type": "hello", "protocol": DialogueTTS.PROTOCOL_VERSION, "client": "status", "id": 1}
	)
	requests.append_array(codec.encode_frame({"type": "status", "id": 2}))
	transport.send(requests)
	while transport.poll() == Transport.Status.OPEN:
		reader.feed(transport.receive())
		var message: Dictionary = reader.next_message()
		while not message.is_empty():
			if message["type"] == "status":
				transport.close()
				return message["cache"]["memory"]["hits"]
			message = reader.next_message()
		await get_tree().process_frame
	_check(false, "status: the server answered")
	return -1


## queued, started, first audio (for played lines) and finished come in that order.
func _check_line_order(line: int) -> void:
	var queued: int = _index("line_queued", line)
	var started: int = _index("line_started", line)
	var audio: int = _index("audio_received", line)
	var finished: int = _index("line_finished", line)
	_check(queued >= 0 and queued < started, "line %d: queued before started" % line)
	_check(audio < 0 or started < audio, "line %d: started before audio" % line)
	_check(finished > maxi(started, audio), "line %d: finished last" % line)


# --- the recorder ----------------------------------------------------------------------------


func _new_tts() -> Node:
	var tts: Node = DialogueTTS.new()
	tts.auto_connect = false
	add_child(tts)
	tts.connected.connect(
		func(server: String) -> void: _record({"name": "connected", "server": server})
	)
	tts.disconnected.connect(
		func(reason: String) -> void: _record({"name": "disconnected", "reason": reason})
	)
	tts.line_queued.connect(
		func(line: int, speaker: String, position: int) -> void:
			_record({"name": "line_queued", "line": line, "speaker": speaker, "position": position})
	)
	tts.line_started.connect(
		func(line: int, speaker: String) -> void:
			_record({"name": "line_started", "line": line, "speaker": speaker})
	)
	tts.audio_received.connect(
		func(line: int, speaker: String, samples: PackedFloat32Array) -> void:
			_check(samples.size() > 0, "audio chunk of line %d has samples" % line)
			_record(
				{
					"name": "audio_received",
					"line": line,
					"speaker": speaker,
					"samples": samples.size()
				}
			)
	)
	tts.line_finished.connect(
		func(line: int, speaker: String, status: String) -> void:
			_record({"name": "line_finished", "line": line, "speaker": speaker, "status": status})
	)
	tts.word_reached.connect(
		func(line: int, start_char: int, end_char: int) -> void:
			_record({"name": "word_reached", "line": line, "start": start_char, "end": end_char})
	)
	tts.viseme_changed.connect(
		func(speaker: String, viseme: String) -> void:
			_record({"name": "viseme_changed", "speaker": speaker, "viseme": viseme})
	)
	tts.line_prepared.connect(
		func(speaker: String, text: String, seconds: float) -> void:
			_record({"name": "line_prepared", "speaker": speaker, "text": text, "seconds": seconds})
	)
	tts.error.connect(
		func(code: String, message: String) -> void:
			_record({"name": "error", "code": code, "message": message})
	)
	return tts


## A new node connected to [param port], asking for [param timings].
func _connected_tts(port: int, timings: Array[String] = []) -> Node:
	var tts: Node = _new_tts()
	tts.timings = timings
	tts.connect_to_server("127.0.0.1", port)
	while _named("connected").is_empty() and _named("disconnected").is_empty():
		await get_tree().process_frame
	_check(tts.is_server_ready(), "connected to port %d" % port)
	return tts


func _on_streamed(line: int, _speaker: String, samples: PackedFloat32Array) -> void:
	var streamed: PackedFloat32Array = _streamed.get(line, PackedFloat32Array())
	streamed.append_array(samples)
	_streamed[line] = streamed


## Records an event with when it happened: the wall clock and the frame.
func _record(event: Dictionary) -> void:
	event["msec"] = Time.get_ticks_msec()
	event["frame"] = Engine.get_process_frames()
	_events.append(event)


func _on_refused_signal(detail: String, name: String) -> void:
	_refusals.append({"name": name, "detail": detail})


func _on_refused_error(code: String, message: String) -> void:
	_refusals.append({"name": "error", "code": code, "detail": message})


## Returns the recorded events called [param name] (of [param line] when given).
func _named(name: String, line: int = -1) -> Array[Dictionary]:
	var found: Array[Dictionary] = []
	for event: Dictionary in _events:
		if event["name"] == name and (line == -1 or event.get("line") == line):
			found.append(event)
	return found


func _named_for(name: String, speaker: String) -> Array[Dictionary]:
	var found: Array[Dictionary] = []
	for event: Dictionary in _named(name):
		if event.get("speaker") == speaker:
			found.append(event)
	return found


## Returns where the first event called [param name] of [param line] is, or -1.
func _index(name: String, line: int) -> int:
	var found: Array[Dictionary] = _named(name, line)
	return _events.find(found[0]) if not found.is_empty() else -1


func _finished(line: int) -> Array[Dictionary]:
	return _named("line_finished", line)


func _audio(line: int) -> Array[Dictionary]:
	return _named("audio_received", line)


func _sum_samples(line: int) -> int:
	var total: int = 0
	for event: Dictionary in _audio(line):
		total += event["samples"]
	return total


func _status(line: int) -> String:
	var found: Array[Dictionary] = _finished(line)
	return found[0]["status"] if not found.is_empty() else "(not finished)"


func _has_event(name: String, key: String, value: String) -> bool:
	for event: Dictionary in _named(name):
		if event.get(key) == value:
			return true
	return false


# --- helpers ---------------------------------------------------------------------------------


## Records one check; prints it when it fails. Returns [param ok].
func _check(ok: bool, what: String) -> bool:
	_checks += 1
	if not ok:
		_failures += 1
		print("GODOT_TEST_FAIL: " + what)
	return ok


func _on_watchdog() -> void:
	if not _done:
		_check(false, "watchdog: still running after %d s" % WATCHDOG_SECONDS)
		_finish()


func _finish() -> void:
	if _done:
		return
	_done = true
	if _failures == 0:
		print("GODOT_TEST_OK n_checks=%d" % _checks)
	else:
		print("GODOT_TEST_FAILED failures=%d n_checks=%d" % [_failures, _checks])
	JavaScriptBridge.eval("window.done = true")


## The JSON form of a vector message as the decoder returns it: integers as int (JSON parses
## every number as float) and {"$bin": hex} as PackedByteArray.
func _from_json(value: Variant, key: String) -> Variant:
	match typeof(value):
		TYPE_FLOAT:
			return value if key in FLOAT_FIELDS else int(value)
		TYPE_ARRAY:
			var items: Array = []
			for item: Variant in value:
				items.append(_from_json(item, ""))
			return items
		TYPE_DICTIONARY:
			if value.size() == 1 and value.has("$bin"):
				return _hex_to_bytes(value["$bin"])
			var result: Dictionary = {}
			for item_key: String in value:
				result[item_key] = _from_json(value[item_key], item_key)
			return result
	return value


## Deep equality that also compares types (1 == 1.0 in GDScript).
func _same(a: Variant, b: Variant) -> bool:
	if typeof(a) != typeof(b):
		return false
	match typeof(a):
		TYPE_DICTIONARY:
			return a.size() == b.size() and _same_items(a, b, a.keys())
		TYPE_ARRAY:
			return a.size() == b.size() and _same_items(a, b, range(a.size()))
	return a == b


func _same_items(a: Variant, b: Variant, keys: Array) -> bool:
	for key: Variant in keys:
		if typeof(b) == TYPE_DICTIONARY and not b.has(key):
			return false
		if not _same(a[key], b[key]):
			return false
	return true


func _hex_to_bytes(hex: String) -> PackedByteArray:
	return hex.hex_decode()
