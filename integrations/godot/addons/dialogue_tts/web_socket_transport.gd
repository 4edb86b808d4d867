extends "transport.gd"
## Web exports, which browsers allow no TCP sockets: the server's WebSocket port
## ([code]dialogue-tts serve --web[/code]). Each binary WebSocket message holds one frame's
## msgpack map without its length prefix, so this class takes the prefix off what it sends
## and puts it back on what it receives.

const FrameReader := preload("frame_reader.gd")
const MsgPack := preload("msgpack.gd")

## Bytes of received messages the socket may hold between two frames; an audio message is
## at most 16 KiB, so this is seconds of speech arriving while the game is busy.
const INBOUND_BUFFER_SIZE: int = 4 * 1024 * 1024
## Bytes of messages to send the socket may hold: the server's largest accepted frame.
const OUTBOUND_BUFFER_SIZE: int = 1024 * 1024

var _socket := WebSocketPeer.new()


func open(host: String, port: int) -> Error:
	_socket.inbound_buffer_size = INBOUND_BUFFER_SIZE
	_socket.outbound_buffer_size = OUTBOUND_BUFFER_SIZE
	return _socket.connect_to_url("ws://%s:%d/" % [host, port])


func poll() -> Status:
	_socket.poll()
	match _socket.get_ready_state():
		WebSocketPeer.STATE_CONNECTING:
			return Status.CONNECTING
		WebSocketPeer.STATE_OPEN:
			return Status.OPEN
	return Status.CLOSED


func send(frames: PackedByteArray) -> Error:
	var start: int = 0
	while start < frames.size():
		var payload: int = start + MsgPack.HEADER_SIZE
		var end: int = payload + FrameReader.frame_length(frames, start)
		var result: Error = _socket.send(
			frames.slice(payload, end), WebSocketPeer.WRITE_MODE_BINARY
		)
		if result != OK:
			return result
		start = end
	return OK


func receive() -> PackedByteArray:
	var bytes := PackedByteArray()
	while _socket.get_available_packet_count() > 0:
		var message: PackedByteArray = _socket.get_packet()
		var size: int = message.size()
		bytes.append_array(
			PackedByteArray([size >> 24, (size >> 16) & 0xff, (size >> 8) & 0xff, size & 0xff])
		)
		bytes.append_array(message)
	return bytes


func close() -> void:
	_socket.close()
