extends Node
## Measures, inside Godot 4, the two delays a player notices, for benchmarks/godot4.py: from
## speak() to the line's first audio frame pushed into its AudioStreamGenerator, and from
## skip() to line_finished("skipped"). Each line of res://bench/lines.json is spoken, then
## skipped once its audio plays. Prints one BENCH line per line, then sets window.done.

const DialogueTTS := preload("res://addons/dialogue_tts/dialogue_tts.gd")
const LINES_PATH: String = "res://bench/lines.json"

var _tts: Node
var _first_audio_usec: int = 0  # when the current line's first frame went into the generator
var _finished_usec: int = 0
var _status: String = ""


func _ready() -> void:
	_tts = DialogueTTS.new()
	_tts.auto_connect = false
	add_child(_tts)
	_tts.audio_received.connect(_on_audio_received)
	_tts.line_finished.connect(_on_line_finished)
	var port: int = OS.get_cmdline_user_args()[0].to_int()
	_tts.connect_to_server("127.0.0.1", port)
	while not _tts.is_server_ready():
		await get_tree().process_frame
	var lines: Array = JSON.parse_string(FileAccess.get_file_as_string(LINES_PATH))
	for entry: Dictionary in lines:
		await _measure(entry["speaker"], entry["text"])
	print("BENCH_DONE")
	JavaScriptBridge.eval("window.done = true")


func _measure(speaker: String, text: String) -> void:
	_first_audio_usec = 0
	_finished_usec = 0
	var spoken: int = Time.get_ticks_usec()
	_tts.speak(speaker, text)
	while _first_audio_usec == 0 and _finished_usec == 0:
		await get_tree().process_frame
	var skipped: int = Time.get_ticks_usec()
	_tts.skip(speaker)
	while _finished_usec == 0:
		await get_tree().process_frame
	print(
		(
			"BENCH first_audio_ms=%.2f skip_ms=%.2f status=%s"
			% [(_first_audio_usec - spoken) / 1000.0, (_finished_usec - skipped) / 1000.0, _status]
		)
	)


## audio_received comes right after the chunk was pushed into the generator (as far as it had
## room, which it has for a line's first chunk).
func _on_audio_received(_line: int, speaker: String, _samples: PackedFloat32Array) -> void:
	if _first_audio_usec == 0 and _tts._speakers[speaker].frames_pushed > 0:
		_first_audio_usec = Time.get_ticks_usec()


func _on_line_finished(_line: int, _speaker: String, status: String) -> void:
	_finished_usec = Time.get_ticks_usec()
	_status = status
