extends Control
## Two characters talk, each voice coming from where the character stands. Their mouths move
## with the voice (viseme_changed) and the subtitle appears word by word as it is said
## (word_reached). The Skip button or ui_accept (Enter, Space) ends the current line at once
## and moves on. While a line plays, the next ones are prepared (lookahead) and their audio
## held by the addon, so each starts in the very frame it is its turn.
##
## Start the server first: [code]dialogue-tts serve[/code]. The characters' pitch and styles
## come from [code]cast.toml[/code], which the game sends to the server when it connects.

## Seconds a line stays on screen when it could not be voiced (no server).
const UNVOICED_SECONDS: float = 2.0
## How many of the next lines the server prepares while a line plays.
const LOOKAHEAD_LINES: int = 2
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
var _text: String = ""  # the line being voiced, with its BBCode

@onready var _mouths: Dictionary = {"guard": %GuardMouth, "traveller": %TravellerMouth}


func _ready() -> void:
	# Read and sent when the connection is made, which is after this first frame.
	DialogueTTS.cast_file = "res://cast.toml"
	# Voices come from the characters' AudioStreamPlayer2D nodes, so they are positional.
	DialogueTTS.set_speaker_player("guard", %GuardVoice)
	DialogueTTS.set_speaker_player("traveller", %TravellerVoice)
	DialogueTTS.connected.connect(_on_connected)
	DialogueTTS.disconnected.connect(_on_disconnected)
	DialogueTTS.line_finished.connect(_on_line_finished)
	# Lip-sync and subtitles, in time with what the player hears.
	DialogueTTS.timings = ["word", "viseme"]
	DialogueTTS.word_reached.connect(_on_word_reached)
	DialogueTTS.viseme_changed.connect(_on_viseme_changed)
	# Characters hidden by visible_characters keep their place: revealing a word moves nothing.
	%Line.visible_characters_behavior = TextServer.VC_CHARS_AFTER_SHAPING
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
	_text = entry["text"]
	%Line.text = _text
	%Line.visible_characters = 0  # word_reached reveals it; line_finished shows all of it
	_line = DialogueTTS.speak(_speaker, entry["text"], _options(entry))
	# The next lines are known: the server prepares them while this one plays. Handed over
	# with the same options as their speak(), or they would not be the prepared lines.
	var ahead: Array[Dictionary] = []
	for next: Dictionary in DIALOGUE.slice(_index + 1, _index + 1 + LOOKAHEAD_LINES):
		ahead.append({"speaker": next["speaker"], "text": next["text"], "options": _options(next)})
	DialogueTTS.lookahead(ahead)


## Returns the options a dialogue entry is voiced with.
func _options(entry: Dictionary) -> Dictionary:
	# "bbcode" makes the server skip RichTextLabel tags such as [i] instead of reading them.
	var options: Dictionary = {"markup": "bbcode"}
	if entry.has("style"):
		options["style"] = entry["style"]  # a style of the speaker in cast.toml
	return options


func _skip() -> void:
	if not _speaker.is_empty():
		DialogueTTS.skip(_speaker)  # line_finished("skipped") follows, which moves on


func _on_line_finished(line: int, _speaker_name: String, status: String) -> void:
	if line != _line:
		return
	%Line.visible_characters = -1
	if status == "error":
		# Not voiced (no server, say): leave the text up for a moment, then go on.
		await get_tree().create_timer(UNVOICED_SECONDS).timeout
	_say_next()


## Shows the subtitle up to the end of the word the voice has reached.
func _on_word_reached(line: int, _start_char: int, end_char: int) -> void:
	if line == _line:
		%Line.visible_characters = _shown_characters(_text, end_char)


func _on_viseme_changed(speaker_name: String, viseme: String) -> void:
	if _mouths.has(speaker_name):
		_mouths[speaker_name].viseme = viseme


func _on_connected(server: String) -> void:
	%Status.text = "Voiced by %s" % server


func _on_disconnected(reason: String) -> void:
	%Status.text = "No voices: %s. Run `dialogue-tts serve`." % reason


## Returns how many characters a RichTextLabel shows for the first [param end] characters of
## [param bbcode]: its tags take none, except [lb] and [rb] (one bracket each). Enough for
## this demo's lines; text with [img] or with brackets that are not tags needs more.
static func _shown_characters(bbcode: String, end: int) -> int:
	var shown: int = 0
	var index: int = 0
	while index < end:
		var close: int = bbcode.find("]", index) if bbcode[index] == "[" else -1
		if close == -1:
			shown += 1
			index += 1
		else:
			var tag: String = bbcode.substr(index + 1, close - index - 1)
			shown += 1 if tag == "lb" or tag == "rb" else 0
			index = close + 1
	return shown
