extends Node
## Measures, inside Godot 4, when the player hears each line of a linear scene, for
## benchmarks/godot4_lookahead.py: from speak() to the playback of the line's audio
## advancing. Each line of res://bench/lines.json is spoken when the one before has finished
## (played to its end, as a player listening would): first as pre-rendered voice files (the
## baseline a recorded voice-over gets: each line's "voice" file, loaded before the line as
## a game preloads its voice files, played by an AudioStreamPlayer), then live without
## lookahead, then with it: as each line begins, the next LOOKAHEAD_LINES go to lookahead(),
## and the scene's first lines are prepared before it starts, as a game would while the
## scene loads. A prepared line whose audio the addon holds (hold_prepared) starts from it in
## speak() itself. Prints one BENCH line per line, then sets window.done.

const DialogueTTS := preload("res://addons/dialogue_tts/dialogue_tts.gd")
const LINES_PATH: String = "res://bench/lines.json"
const LOOKAHEAD_LINES: int = 2

var _tts: Node
var _lines: Array = []
var _prepared: Dictionary = {}  # text -> true, for the lines line_prepared has named
var _line: int = -1  # the line being measured
var _done: bool = false
var _started_usec: int = 0  # when the scene started, for the mean frame time
var _started_frame: int = 0


func _ready() -> void:
	_tts = DialogueTTS.new()
	_tts.auto_connect = false
	add_child(_tts)
	_tts.line_finished.connect(_on_line_finished)
	_tts.line_prepared.connect(
		func(_speaker: String, text: String, _s: float) -> void: _prepared[text] = true
	)
	_tts.connect_to_server("127.0.0.1", OS.get_cmdline_user_args()[0].to_int())
	while not _tts.is_server_ready():
		await get_tree().process_frame
	_lines = JSON.parse_string(FileAccess.get_file_as_string(LINES_PATH))
	print("BENCH_INFO output_latency_ms=%.1f" % (AudioServer.get_output_latency() * 1000.0))
	_started_usec = Time.get_ticks_usec()
	_started_frame = Engine.get_process_frames()
	for index: int in _lines.size():
		await _measure_file(index)
	for index: int in _lines.size():
		await _measure("live", index)
	_tts.lookahead(_ahead(0))
	while not _prepared.has(_lines[0]["text"]):
		await get_tree().process_frame
	for index: int in _lines.size():
		_tts.lookahead(_ahead(index + 1))
		await _measure("lookahead", index)
	var seconds: float = (Time.get_ticks_usec() - _started_usec) / 1e6
	var frames: int = Engine.get_process_frames() - _started_frame
	print("BENCH_INFO frame_ms=%.1f" % (seconds * 1000.0 / frames))
	print("BENCH_DONE")
	JavaScriptBridge.eval("window.done = true")


## Speaks line [param index]; prints when the playback position of its speaker's player
## passed the line's first frame (the generator's frames consumed by the mixer: the issue's
## "playback position advancing") and when the addon counts it played (that, less the output
## latency not yet elapsed), in ms from speak(); waits for its line_finished. Also the game
## frames and ms until the line's first audio was in the addon (0: held, pushed in speak()
## itself; else received from the server, checked once per frame).
func _measure(mode: String, index: int) -> void:
	var entry: Dictionary = _lines[index]
	var was_prepared: bool = _prepared.has(entry["text"])
	_done = false
	var spoken: int = Time.get_ticks_usec()
	var spoken_frame: int = Engine.get_process_frames()
	var mixed_frames: int = 0
	var audio_frames: int = -1
	_line = _tts.speak(entry["speaker"], entry["text"])
	var held: bool = _tts.is_line_held(_line)
	var audio_usec: int = 0
	var mixed_usec: int = 0
	var heard_usec: int = 0
	while heard_usec == 0 and not _done:
		var speaker: Object = _tts._speakers[entry["speaker"]]
		if speaker.first_line == _line:
			if audio_frames < 0:
				audio_frames = Engine.get_process_frames() - spoken_frame
				audio_usec = Time.get_ticks_usec()
			var buffered: int = speaker.buffer_frames - speaker.playback.get_frames_available()
			if mixed_usec == 0 and speaker.frames_pushed - buffered > speaker.first_frame:
				mixed_usec = Time.get_ticks_usec()
				mixed_frames = Engine.get_process_frames() - spoken_frame
			if _tts._played_frames(speaker) > speaker.first_frame:
				heard_usec = Time.get_ticks_usec()
				break
		await get_tree().process_frame
	while not _done:
		await get_tree().process_frame
	print(
		(
			(
				"BENCH mode=%s prepared=%s held=%s mixed_ms=%.2f heard_ms=%.2f frames=%d"
				+ " audio_frames=%d audio_ms=%.2f"
			)
			% [
				mode,
				was_prepared,
				held,
				(mixed_usec - spoken) / 1000.0,
				(heard_usec - spoken) / 1000.0,
				mixed_frames,
				audio_frames,
				(audio_usec - spoken) / 1000.0,
			]
		)
	)


## Plays line [param index]'s pre-rendered voice file; prints when the player's playback
## position advanced, in ms from play(), and waits for it to finish.
func _measure_file(index: int) -> void:
	var stream := AudioStreamWAV.load_from_buffer(
		FileAccess.get_file_as_bytes(_lines[index]["voice"])
	)
	var player := AudioStreamPlayer.new()
	player.stream = stream
	add_child(player)
	var spoken: int = Time.get_ticks_usec()
	var spoken_frame: int = Engine.get_process_frames()
	player.play()
	while player.get_playback_position() <= 0.0 and player.playing:
		await get_tree().process_frame
	var mixed_usec: int = Time.get_ticks_usec()
	var mixed_frames: int = Engine.get_process_frames() - spoken_frame
	if player.playing:
		await player.finished
	player.queue_free()
	print(
		(
			(
				"BENCH mode=files prepared=true held=false mixed_ms=%.2f heard_ms=-1 frames=%d"
				+ " audio_frames=0 audio_ms=0"
			)
			% [(mixed_usec - spoken) / 1000.0, mixed_frames]
		)
	)


## The lines from [param index] on that lookahead() gets, as a dialogue system would give them.
func _ahead(index: int) -> Array[Dictionary]:
	var ahead: Array[Dictionary] = []
	for entry: Dictionary in _lines.slice(index, index + LOOKAHEAD_LINES):
		ahead.append({"speaker": entry["speaker"], "text": entry["text"]})
	return ahead


func _on_line_finished(line: int, _speaker: String, _status: String) -> void:
	if line == _line:
		_done = true
