extends Node
## Watches examples/godot as it plays, for tests/test_godot4.py, which adds this autoload to
## the demo's pack: prints how each line finished and which mouth shapes each character
## showed, which lines were prepared ahead and which started from their held audio, then
## sets window.done once the demo shows "The end.".

const MOUTHS: Array[String] = ["GuardMouth", "TravellerMouth"]
const THE_END: String = "[i]The end.[/i]"

var _shapes: Dictionary = {}  # mouth name -> {viseme: true} of every shape it showed


func _ready() -> void:
	DialogueTTS.line_finished.connect(_on_line_finished)
	DialogueTTS.line_prepared.connect(_on_line_prepared)
	DialogueTTS.line_started.connect(_on_line_started)
	for mouth: String in MOUTHS:
		_shapes[mouth] = {}


func _process(_delta: float) -> void:
	var scene: Node = get_tree().current_scene
	if scene == null:
		return
	for mouth: String in MOUTHS:
		_shapes[mouth][scene.get_node("%" + mouth).get("viseme")] = true
	if (scene.get_node("%Line") as RichTextLabel).text == THE_END:
		for mouth: String in MOUTHS:
			print("DEMO_MOUTH %s %s" % [mouth, " ".join(_shapes[mouth].keys())])
		print("DEMO_END")
		JavaScriptBridge.eval("window.done = true")
		set_process(false)


func _on_line_finished(line: int, speaker: String, status: String) -> void:
	print("DEMO_LINE %d %s %s" % [line, speaker, status])


func _on_line_prepared(speaker: String, text: String, _seconds: float) -> void:
	print("DEMO_PREPARED %s %s" % [speaker, text])


func _on_line_started(line: int, speaker: String) -> void:
	if DialogueTTS.is_line_held(line):
		print("DEMO_HELD %d %s" % [line, speaker])
