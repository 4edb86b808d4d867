extends Reference
## The seam between the DialogueTTS node and its socket: a connection that carries protocol
## frames (a 4-byte big-endian length, then one msgpack map). Everything above it, the API,
## queues, audio and timings, is the same for every transport.
##
## [code]tcp_transport.gd[/code]: desktop and mobile games.

enum Status { CONNECTING, OPEN, CLOSED }


## Starts connecting to the server; returns an error when it cannot even start.
func open(_host: String, _port: int) -> int:
	return ERR_UNAVAILABLE


## Does the socket's pending work; returns where the connection stands.
func poll() -> int:
	return Status.CLOSED


## Sends [param frames], whole frames one after the other; what the socket cannot take yet
## is kept and sent by later polls.
func send(_frames: PoolByteArray) -> int:
	return ERR_UNAVAILABLE


## Returns the bytes received since the last call, as a stream of frames (maybe cut anywhere).
func receive() -> PoolByteArray:
	return PoolByteArray()


func close() -> void:
	pass
