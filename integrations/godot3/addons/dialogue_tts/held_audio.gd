extends Reference
## The audio of prepared lines, held for their [code]speak()[/code] (DialogueTTS's
## [code]hold_prepared[/code]): fetched from the server's cache ahead, so that a speak() that
## matches one starts it in that call, with no round trip. Each line is found by the key of
## its prepare request (speaker, text and every option but interrupt: the server's own match).
## Bounded: at most [constant MAX_LINES] lines and [constant MAX_SAMPLES] samples, the line
## held longest dropped first.

## Most lines held; past it, or past [constant MAX_SAMPLES], the line held longest is dropped
## (it still plays, from the server's cache, a round trip later).
const MAX_LINES: int = 8
## Most samples held, all lines together: 8 MiB of float32, about 95 s at 22.05 kHz.
const MAX_SAMPLES: int = 2 * 1024 * 1024
## Longest line held, in seconds: its audio arrives in one message, which must fit the
## socket's buffer (15 s at 48 kHz is 2.9 MB). A longer line is not fetched.
const MAX_LINE_SECONDS: float = 15.0

## Samples held, all lines together.
var samples_held: int = 0
## Requests in flight that fetch a line's audio: request id -> the line's prepare entry
## ([code]{"request", "key", "lookahead", "seconds"}[/code]).
var fetches: Dictionary = {}

var _lines: Dictionary = {}  # key -> Line, held longest first
var _path: Array = []  # keys of the lines of the last lookahead() call
var _previous_path: Array = []  # and of the call before it


## Holds [param samples] (mono, -1..1) for the line of [param key]; [param from_lookahead]:
## handed over by lookahead(), whose next call may drop it.
func hold(
	key: String, speaker: String, samples: PoolRealArray, rate: int, from_lookahead: bool
) -> void:
	forget(key)
	var line := Line.new()
	line.speaker = speaker
	line.samples = samples
	line.sample_rate = rate
	line.from_lookahead = from_lookahead
	_lines[key] = line
	samples_held += samples.size()
	while _lines.size() > MAX_LINES or samples_held > MAX_SAMPLES:
		forget(_lines.keys()[0])


func has(key: String) -> bool:
	return _lines.has(key)


## Returns the line of [param key] and forgets it (a line is said once; said again, it
## comes from the server's cache), or null when none is held.
func take(key: String) -> Line:
	var line: Line = _lines.get(key)
	forget(key)
	return line


func forget(key: String) -> void:
	if _lines.has(key):
		samples_held -= _lines[key].samples.size()
		_lines.erase(key)


## Drops the lines of [param speaker], or every line when empty; so is their audio being
## fetched, when it comes.
func drop(speaker: String) -> void:
	for key in _lines.keys():
		if speaker.empty() or _lines[key].speaker == speaker:
			forget(key)
	for entry in fetches.values():
		if speaker.empty() or entry["request"]["speaker"] == speaker:
			entry["dropped"] = true


## Takes the keys of the lines a lookahead() call handed over, and drops the lines of earlier
## calls that are on neither this path nor the last one: the line reached now was on the
## last, whether its speak() comes before or after the call.
func set_path(keys: Array) -> void:
	_previous_path = _path
	_path = keys
	for key in _lines.keys():
		if _lines[key].from_lookahead and not _on_path(key):
			forget(key)


## Returns true if the audio fetched for a prepare [param entry] is still to be held when it
## comes: not dropped, and a line of lookahead() only while it is on the path.
func wants(entry: Dictionary) -> bool:
	if entry.get("dropped", false):
		return false
	return not entry["lookahead"] or _on_path(entry["key"])


func _on_path(key: String) -> bool:
	return key in _path or key in _previous_path


## A prepared line's audio.
class Line:
	var speaker: String
	## Byte for byte what the server streams for the line's say.
	var samples: PoolRealArray
	var sample_rate: int = 0
	var from_lookahead: bool = false
