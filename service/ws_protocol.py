"""The WebSocket protocol uvicorn serves the API's sockets with (`--ws
service.ws_protocol:QueuedWebSocketProtocol`, devstack/commands.py and the Procfile): uvicorn's
own websockets-sansio protocol, but for when it stops reading a socket.

uvicorn's stops reading a socket (pause_reading) as soon as one message waits for the app, and
reads again once the app has taken it: two epoll changes and a loop iteration for every message,
which is a good part of a media frame's cost (20 ms frames, two tracks: BENCHMARKS.md, Real-time
capacity). This one stops reading only once `--ws-max-queue` messages wait (uvicorn's setting,
32 by default, which its sansio protocol leaves unused), and reads again once the app has taken
them all. A socket's memory stays bounded (that many messages of at most `--ws-max-size` each,
plus one read); a peer faster than the app is still held back by TCP; nothing else changes
(the handshake, the closing, pings, errors are uvicorn's).
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class QueuedWebSocketProtocol(WebSocketsSansIOProtocol):
    def send_receive_event_to_app(self) -> None:
        # uvicorn 0.54's method, but for the pause's condition (the queue is full, not merely
        # not empty).
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # past websocket.close: discarded, so that the peer's close reply is read
        if self.curr_msg_data_type == "text":
            try:
                self.queue.put_nowait({"type": "websocket.receive", "text": data.decode()})
            except UnicodeDecodeError:
                self.logger.exception("Invalid UTF-8 sequence received from client.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused and self.queue.qsize() >= self.config.ws_max_queue:
            self.read_paused = True
            self.transport.pause_reading()
