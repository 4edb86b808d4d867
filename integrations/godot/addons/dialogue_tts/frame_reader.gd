extends RefCounted
## Splits the bytes read from the server into protocol messages.
##
## Feed it whatever [method StreamPeer.get_partial_data] returned (part of a frame, several
## frames, or both), then call [method next_message] until it returns an empty Dictionary.
## A frame is a 4-byte big-endian length N, then N bytes of one msgpack map with a string
## "type".

const MsgPack := preload("msgpack.gd")

## Largest frame accepted: the protocol's limit for server frames (an audio_file).
const DEFAULT_MAX_FRAME: int = 64 * 1024 * 1024

## Largest frame accepted; a larger length prefix is a fatal [code]frame_too_large[/code].
var max_frame: int = DEFAULT_MAX_FRAME
## The protocol error code of the last [method next_message] ([code]invalid_frame[/code],
## [code]invalid_message[/code] or [code]frame_too_large[/code]), or empty.
var error_code: String = ""
## A human description of [member error_code].
var error_message: String = ""
## True after [code]frame_too_large[/code]: the stream cannot be resynchronised, close it.
var fatal: bool = false

var _buffer := PackedByteArray()
var _start: int = 0  # bytes of _buffer already consumed
var _codec := MsgPack.new()


## Appends received bytes.
func feed(bytes: PackedByteArray) -> void:
	if _start > 0 and _start * 2 >= _buffer.size():
		_buffer = sliced(_buffer, _start, _buffer.size())  # drop them once they are half of it
		_start = 0
	_buffer.append_array(bytes)


## Returns the next whole message, or an empty Dictionary when more bytes are needed or the
## frame was bad (then [member error_code] is set and the bad frame is skipped).
func next_message() -> Dictionary:
	error_code = ""
	error_message = ""
	var payload: PackedByteArray = _next_payload()
	if payload.is_empty():
		return {}
	var value: Variant = _codec.decode(payload)
	if not _codec.error.is_empty():
		return _fail("invalid_frame", "frame is not valid msgpack: " + _codec.error)
	if typeof(value) != TYPE_DICTIONARY or typeof(value.get("type")) != TYPE_STRING:
		return _fail("invalid_message", "a frame must hold a map with a string 'type'")
	return value


## Returns the next whole frame's payload, or an empty array when there is none (yet).
func _next_payload() -> PackedByteArray:
	if fatal or _buffer.size() - _start < MsgPack.HEADER_SIZE:
		return PackedByteArray()
	var length: int = frame_length(_buffer, _start)
	if length > max_frame:
		fatal = true
		_fail("frame_too_large", "frame length %d is over %d" % [length, max_frame])
		return PackedByteArray()
	if length == 0:
		_start += MsgPack.HEADER_SIZE
		_fail("invalid_frame", "empty frame (length 0)")
		return PackedByteArray()
	var end: int = _start + MsgPack.HEADER_SIZE + length
	if _buffer.size() < end:
		return PackedByteArray()
	var payload: PackedByteArray = sliced(_buffer, _start + MsgPack.HEADER_SIZE, end)
	_start = end
	return payload


## Returns the length prefix (4 bytes, big-endian) of the frame at [param start].
static func frame_length(bytes: PackedByteArray, start: int) -> int:
	return (
		(bytes[start] << 24) | (bytes[start + 1] << 16) | (bytes[start + 2] << 8) | bytes[start + 3]
	)


func _fail(code: String, message: String) -> Dictionary:
	error_code = code
	error_message = message
	return {}


#region Differs in Godot 3: slicing


## Returns the bytes of [param bytes] from [param from] up to [param to] (excluded).
static func sliced(bytes: PackedByteArray, from: int, to: int) -> PackedByteArray:
	return bytes.slice(from, to)

#endregion
