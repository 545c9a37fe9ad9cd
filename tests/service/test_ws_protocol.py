"""service/ws_protocol.py copies one method of uvicorn's websockets-sansio protocol and changes
only when it stops reading. If an upgrade of uvicorn changes that method, this fails: re-copy it
(keeping the queue-full condition) rather than serve sockets on a stale copy."""

from __future__ import annotations

import ast
import inspect
import textwrap

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from service.ws_protocol import QueuedWebSocketProtocol

METHOD = "send_receive_event_to_app"


def _statements(cls: type) -> list[str]:
    """The method's statements as code (comments and docstrings are not in an AST), with the
    pause's condition set apart: the one line the copy changes."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, METHOD))))
    body = tree.body[0].body  # type: ignore[attr-defined]
    return [ast.unparse(node) for node in body]


def test_the_copied_method_is_uvicorns_but_for_pausing_only_once_the_queue_is_full() -> None:
    ours, theirs = _statements(QueuedWebSocketProtocol), _statements(WebSocketsSansIOProtocol)
    assert ours[:-1] == theirs[:-1]
    assert theirs[-1].startswith("if not self.read_paused:")
    assert ours[-1].startswith(
        "if not self.read_paused and self.queue.qsize() >= self.config.ws_max_queue:"
    )
    assert ours[-1].split(":", 1)[1] == theirs[-1].split(":", 1)[1]
