extends Reference
## The msgpack subset the dialogue-tts protocol uses, and frame encoding.
##
## Encodes nil, bool, int, float (always float64), String, PoolByteArray (bin), Array and
## Dictionary (map). Integers are written in their smallest form, so a map built in the same
## key order as a protocol test vector encodes to exactly its bytes. Decodes the same types
## plus float32; extension types are rejected.
##
## [codeblock]
## var codec := MsgPack.new()
## var bytes := codec.encode({"type": "ping", "id": 1})
## var value = codec.decode(bytes)  # null and codec.error != "" on failure
## [/codeblock]

## Bytes in a frame's big-endian length prefix.
const HEADER_SIZE: int = 4

## Why the last [method decode] failed; empty after a success.
var error: String = ""


## Returns [param message] as one frame: a 4-byte big-endian length, then the msgpack map.
func encode_frame(message: Dictionary) -> PoolByteArray:
	var payload: PoolByteArray = encode(message)
	var stream := StreamPeerBuffer.new()
	stream.big_endian = true
	stream.put_u32(payload.size())
	stream.put_data(payload)
	return stream.data_array


## Returns the msgpack bytes of [param value].
func encode(value) -> PoolByteArray:
	var stream := StreamPeerBuffer.new()
	stream.big_endian = true
	_write(stream, value)
	return stream.data_array


## Returns the one value in [param bytes], or null with [member error] set.
func decode(bytes: PoolByteArray):
	error = ""
	var stream := StreamPeerBuffer.new()
	stream.big_endian = true
	stream.data_array = bytes
	var value = _read(stream)
	if error.empty() and stream.get_available_bytes() > 0:
		error = "%d bytes after the value" % stream.get_available_bytes()
	return null if not error.empty() else value


func _write(stream: StreamPeerBuffer, value) -> void:
	match typeof(value):
		TYPE_NIL:
			stream.put_u8(0xc0)
		TYPE_BOOL:
			stream.put_u8(0xc3 if value else 0xc2)
		TYPE_INT:
			_write_int(stream, value)
		TYPE_REAL:
			stream.put_u8(0xcb)
			stream.put_double(value)
		TYPE_STRING:
			var utf8: PoolByteArray = _utf8(value)
			_write_head(stream, utf8.size(), 0xa0, 31, 0xd9, 0xda, 0xdb)
			stream.put_data(utf8)
		TYPE_RAW_ARRAY:
			_write_head(stream, value.size(), -1, -1, 0xc4, 0xc5, 0xc6)
			stream.put_data(value)
		TYPE_ARRAY:
			_write_head(stream, value.size(), 0x90, 15, -1, 0xdc, 0xdd)
			for item in value:
				_write(stream, item)
		TYPE_DICTIONARY:
			_write_head(stream, value.size(), 0x80, 15, -1, 0xde, 0xdf)
			for key in value:
				_write(stream, key)
				_write(stream, value[key])
		_:
			push_error("msgpack: cannot encode a value of type %s" % _type_name(value))
			stream.put_u8(0xc0)


func _write_int(stream: StreamPeerBuffer, value: int) -> void:
	if value >= 0:
		if value <= 0x7f:
			stream.put_u8(value)
		elif value <= 0xff:
			stream.put_u8(0xcc)
			stream.put_u8(value)
		elif value <= 0xffff:
			stream.put_u8(0xcd)
			stream.put_u16(value)
		elif value <= 0xffffffff:
			stream.put_u8(0xce)
			stream.put_u32(value)
		else:
			stream.put_u8(0xcf)
			stream.put_u64(value)
	elif value >= -32:
		stream.put_8(value)  # negative fixint: 0xe0..0xff
	elif value >= -0x80:
		stream.put_u8(0xd0)
		stream.put_8(value)
	elif value >= -0x8000:
		stream.put_u8(0xd1)
		stream.put_16(value)
	elif value >= -0x80000000:
		stream.put_u8(0xd2)
		stream.put_32(value)
	else:
		stream.put_u8(0xd3)
		stream.put_64(value)


## Writes a str/bin/array/map header: a fix form when [param fix_max] allows, else the
## 8-, 16- or 32-bit length form (-1 where msgpack has no such form).
func _write_head(
	stream: StreamPeerBuffer, size: int, fix: int, fix_max: int, op8: int, op16: int, op32: int
) -> void:
	if size <= fix_max:
		stream.put_u8(fix | size)
	elif size <= 0xff and op8 >= 0:
		stream.put_u8(op8)
		stream.put_u8(size)
	elif size <= 0xffff:
		stream.put_u8(op16)
		stream.put_u16(size)
	else:
		stream.put_u8(op32)
		stream.put_u32(size)


func _read(stream: StreamPeerBuffer):
	if not _has(stream, 1):
		return null
	var op: int = stream.get_u8()
	var value = null
	if op <= 0x7f:
		value = op  # positive fixint
	elif op >= 0xe0:
		value = op - 0x100  # negative fixint
	elif op >= 0xa0 and op <= 0xbf:
		value = _read_str(stream, op & 0x1f)
	elif op >= 0x90 and op <= 0x9f:
		value = _read_array(stream, op & 0x0f)
	elif op >= 0x80 and op <= 0x8f:
		value = _read_map(stream, op & 0x0f)
	else:
		match op:
			0xc0:
				value = null
			0xc2, 0xc3:
				value = op == 0xc3
			0xc4, 0xc5, 0xc6:
				value = _read_bin(stream, _read_size(stream, op - 0xc4))
			0xca:
				value = stream.get_float() if _has(stream, 4) else null
			0xcb:
				value = stream.get_double() if _has(stream, 8) else null
			0xcc:
				value = stream.get_u8() if _has(stream, 1) else null
			0xcd:
				value = stream.get_u16() if _has(stream, 2) else null
			0xce:
				value = stream.get_u32() if _has(stream, 4) else null
			0xcf:
				value = stream.get_u64() if _has(stream, 8) else null  # over 2^63-1 wraps
			0xd0:
				value = stream.get_8() if _has(stream, 1) else null
			0xd1:
				value = stream.get_16() if _has(stream, 2) else null
			0xd2:
				value = stream.get_32() if _has(stream, 4) else null
			0xd3:
				value = stream.get_64() if _has(stream, 8) else null
			0xd9, 0xda, 0xdb:
				value = _read_str(stream, _read_size(stream, op - 0xd9))
			0xdc, 0xdd:
				value = _read_array(stream, _read_size(stream, op - 0xdb))
			0xde, 0xdf:
				value = _read_map(stream, _read_size(stream, op - 0xdd))
			_:
				_fail("unsupported msgpack type 0x%02x" % op)
	return value


## Reads a length of 1, 2 or 4 bytes ([param width_code] 0, 1 or 2); -1 when truncated.
func _read_size(stream: StreamPeerBuffer, width_code: int) -> int:
	if not _has(stream, 1 << width_code):
		return -1
	match width_code:
		0:
			return stream.get_u8()
		1:
			return stream.get_u16()
	return stream.get_u32()


func _read_str(stream: StreamPeerBuffer, size: int):
	var bytes = _read_bin(stream, size)
	return null if bytes == null else bytes.get_string_from_utf8()


func _read_bin(stream: StreamPeerBuffer, size: int):
	if size < 0 or not _has(stream, size):
		return null
	if size == 0:
		return PoolByteArray()
	return stream.get_data(size)[1]


func _read_array(stream: StreamPeerBuffer, size: int):
	var result: Array = []
	for _i in int(max(size, 0)):
		var item = _read(stream)
		if not error.empty():
			return null
		result.append(item)
	return null if size < 0 else result


func _read_map(stream: StreamPeerBuffer, size: int):
	var result: Dictionary = {}
	for _i in int(max(size, 0)):
		var key = _read(stream)
		if error.empty() and typeof(key) != TYPE_STRING:
			_fail("map key is not a string")
		var item = _read(stream) if error.empty() else null
		if not error.empty():
			return null
		result[key] = item
	return null if size < 0 else result


## Returns true if [param count] more bytes are there, else records a truncation error.
func _has(stream: StreamPeerBuffer, count: int) -> bool:
	if stream.get_available_bytes() >= count:
		return true
	_fail("truncated: %d more bytes needed" % (count - stream.get_available_bytes()))
	return false


func _fail(message: String) -> void:
	if error.empty():
		error = message


#region Differs in Godot 3: strings and type names


static func _utf8(value) -> PoolByteArray:
	return value.to_utf8()


static func _type_name(value) -> String:
	return "type %d" % typeof(value)

#endregion
