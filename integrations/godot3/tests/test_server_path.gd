extends SceneTree
## Headless test of DialogueTTS.server_path, run by tests/test_bundle.py:
##
##     godot3-server --path PROJECT -s res://tests/test_server_path.gd
##
## DIALOGUE_TTS_SERVER_PATH is the server_path to set (the bundle); no server runs before.
## The node must start it, connect to it with a fresh token, and voice two lines, the first
## spoken before the server listens. Prints GODOT_TEST_VOICED port=PORT once they are voiced;
## then quits (exit 0, or 1 after a GODOT_TEST_FAIL line). DIALOGUE_TTS_TEST_THEN "hold": runs
## on until it is killed; "free FILE": once FILE exists, frees the node (which stops its
## server), prints GODOT_TEST_FREED and runs on.

const DialogueTTS = preload("res://addons/dialogue_tts/dialogue_tts.gd")
## Quits with a failure if the lines are not voiced by then (a hang guard, not a timing check).
const WATCHDOG_SECONDS: float = 240.0
const LINES: Array = ["Halt! Who goes there?", "Move along, then."]

var _tts: Node
var _spoken: int = 0
var _finished: Array = []  # [line, status] per line_finished
var _samples: int = 0
var _elapsed: float = 0.0
var _done: bool = false
var _free_when: String = ""  # "free FILE": the FILE


func _initialize() -> void:
	_tts = DialogueTTS.new()
	_tts.server_path = OS.get_environment("DIALOGUE_TTS_SERVER_PATH")
	_tts.connect("line_finished", self, "_on_line_finished")
	_tts.connect("audio_received", self, "_on_audio_received")
	root.add_child(_tts)  # its _ready() starts the server
	_tts.speak("guard", LINES[0])  # waits for the server
	_spoken = 1


func _idle(delta: float) -> bool:
	_elapsed += delta
	if not _free_when.empty() and File.new().file_exists(_free_when):
		_free_when = ""
		_tts.free()
		print("GODOT_TEST_FREED")
	if _done:
		return false
	if _finished.size() == _spoken:  # every line spoken so far has finished
		for finished in _finished:
			if finished[1] != "done":
				_fail("a line ended %s: %s" % [finished[1], _finished])
				return false
		if _spoken < LINES.size():
			_tts.speak("guard", LINES[_spoken])  # over the live connection
			_spoken += 1
		elif _samples < 22050:
			_fail("%d samples for %d lines" % [_samples, _spoken])
		else:
			_done = true
			print("GODOT_TEST_VOICED port=%d" % _tts.port)
			_then(OS.get_environment("DIALOGUE_TTS_TEST_THEN"))
	elif _elapsed > WATCHDOG_SECONDS:
		_fail("watchdog: %s after %d s" % [_finished, WATCHDOG_SECONDS])
	return false


func _then(what: String) -> void:
	if what.begins_with("free "):
		_free_when = what.trim_prefix("free ")
	elif what != "hold":
		quit(0)


func _on_line_finished(line: int, _speaker: String, status: String) -> void:
	_finished.append([line, status])


func _on_audio_received(_line: int, _speaker: String, samples: PoolRealArray) -> void:
	_samples += samples.size()


func _fail(message: String) -> void:
	_done = true
	print("GODOT_TEST_FAIL %s" % message)
	quit(1)
