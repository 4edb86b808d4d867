extends Control
## Two characters talk, each voice coming from where the character stands. The Skip button
## or ui_accept (Enter, Space) ends the current line at once and moves on.
##
## Start the server first: [code]dialogue-tts serve[/code]. The characters' pitch and styles
## come from [code]cast.toml[/code], which the game sends to the server when it connects.

## Seconds a line stays on screen when it could not be voiced (no server).
const UNVOICED_SECONDS: float = 2.0
const DIALOGUE: Array[Dictionary] = [
	{"speaker": "guard", "text": "Halt! Who goes there?"},
	{"speaker": "traveller", "text": "Just a tired traveller, looking for a warm bed."},
	{
		"speaker": "guard",
		"text": "At this hour? The gates closed at sundown. State your business.",
		"style": "stern",
	},
	{
		"speaker": "traveller",
		"text": "I bring letters for the innkeeper. [i]Urgent[/i] letters.",
		"style": "pleading",
	},
	{"speaker": "guard", "text": "Hmm. Go on, then. And keep to the main road."},
]

var _index: int = -1
var _line: int = -1  # the line being voiced, as returned by DialogueTTS.speak()
var _speaker: String = ""


func _ready() -> void:
	# Read and sent when the connection is made, which is after this first frame.
	DialogueTTS.cast_file = "res://cast.toml"
	# Voices come from the characters' AudioStreamPlayer2D nodes, so they are positional.
	DialogueTTS.set_speaker_player("guard", %GuardVoice)
	DialogueTTS.set_speaker_player("traveller", %TravellerVoice)
	DialogueTTS.connected.connect(_on_connected)
	DialogueTTS.disconnected.connect(_on_disconnected)
	DialogueTTS.line_finished.connect(_on_line_finished)
	%SkipButton.pressed.connect(_skip)
	_say_next()


func _unhandled_input(event: InputEvent) -> void:
	if event.is_action_pressed("ui_accept"):
		_skip()
		get_viewport().set_input_as_handled()


func _say_next() -> void:
	_index += 1
	if _index >= DIALOGUE.size():
		%Speaker.text = ""
		%Line.text = "[i]The end.[/i]"
		%SkipButton.disabled = true
		return
	var entry: Dictionary = DIALOGUE[_index]
	_speaker = entry["speaker"]
	%Speaker.text = _speaker.capitalize()
	%Line.text = entry["text"]
	# "bbcode" makes the server skip RichTextLabel tags such as [i] instead of reading them.
	var options: Dictionary = {"markup": "bbcode"}
	if entry.has("style"):
		options["style"] = entry["style"]  # a style of the speaker in cast.toml
	_line = DialogueTTS.speak(_speaker, entry["text"], options)


func _skip() -> void:
	if not _speaker.is_empty():
		DialogueTTS.skip(_speaker)  # line_finished("skipped") follows, which moves on


func _on_line_finished(line: int, _speaker_name: String, status: String) -> void:
	if line != _line:
		return
	if status == "error":
		# Not voiced (no server, say): leave the text up for a moment, then go on.
		await get_tree().create_timer(UNVOICED_SECONDS).timeout
	_say_next()


func _on_connected(server: String) -> void:
	%Status.text = "Voiced by %s" % server


func _on_disconnected(reason: String) -> void:
	%Status.text = "No voices: %s. Run `dialogue-tts serve`." % reason
