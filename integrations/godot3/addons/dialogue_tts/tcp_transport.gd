extends "transport.gd"
## Desktop and mobile games: the server's TCP port, where frames go as they are.

const FrameReader := preload("frame_reader.gd")

var _tcp := StreamPeerTCP.new()
var _outbox := PoolByteArray()  # bytes the socket did not take yet


func open(host: String, port: int) -> int:
	var result: int = _tcp.connect_to_host(host, port)
	if result == OK:
		_tcp.set_no_delay(true)
	return result


func poll() -> int:
	_poll_socket()
	match _tcp.get_status():
		StreamPeerTCP.STATUS_CONNECTING:
			return Status.CONNECTING
		StreamPeerTCP.STATUS_CONNECTED:
			return Status.OPEN if _flush() == OK else Status.CLOSED
	return Status.CLOSED


func send(frames: PoolByteArray) -> int:
	_outbox.append_array(frames)
	return _flush()


func receive() -> PoolByteArray:
	var available: int = _tcp.get_available_bytes()
	if available == 0:
		return PoolByteArray()
	var result: Array = _tcp.get_partial_data(available)
	return result[1] if result[0] == OK else PoolByteArray()


func close() -> void:
	_tcp.disconnect_from_host()


#region Differs in Godot 3: polling


func _poll_socket() -> void:
	pass  # in Godot 3, get_status() polls the socket


#endregion


## Sends what the socket takes of the bytes not sent yet.
func _flush() -> int:
	if _outbox.empty():
		return OK
	var result: Array = _tcp.put_partial_data(_outbox)
	if result[0] == OK:
		_outbox = FrameReader.sliced(_outbox, result[1], _outbox.size())
	return result[0]
