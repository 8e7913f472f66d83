"""Test backends: an echo app that reports what it received, and raw TCP misbehavers.

    async with serve_app(EchoApp("a")) as url: ...
    async with raw_server(close_immediately) as url: ...   # resets before any response
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

__all__ = ["EchoApp", "close_immediately", "never_answer", "raw_server"]


class EchoApp:
    """ASGI app: JSON of the request it got, plus behaviours selected by path.

    /status/<code>            answer with that status
    /slow?ms=N                wait N ms, then answer
    /reset-after              send headers and part of the body, then fail (connection dropped)
    /stream?n=N&ms=M          server-sent events: N events, M ms apart
    /big?bytes=N              N bytes of body, streamed in 64 KiB chunks
    /upload                   read the body streaming, answer its size and sha256
    /ws (any path, upgraded)  websocket echo: "<name>:<text>", bytes back as sent, "close-me" closes with 4001
    anything else             echo JSON: name, method, raw_path, query, headers, body size
    """

    def __init__(self, name: str = "echo") -> None:
        self.name = name
        self.requests: list[dict[str, Any]] = []
        self.upgrades: list[dict[str, Any]] = []  # the WebSocket upgrades it accepted, like ``requests``
        self.health_status = 200

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] == "websocket":
            await self._ws(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        raw_path: bytes = scope.get("raw_path") or path.encode()
        query = parse_qs(scope.get("query_string", b"").decode())
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        record = {"name": self.name, "method": scope["method"], "raw_path": raw_path.decode("latin-1"),
                  "query": scope.get("query_string", b"").decode("latin-1"), "headers": headers}
        self.requests.append(record)
        extra = [(b"x-served-by", self.name.encode())]

        if path == "/healthz":
            await _respond(send, self.health_status, {"status": "ok" if self.health_status < 400 else "down"}, extra)
            return
        if path.startswith("/status/"):
            await _drain(receive)
            await _respond(send, int(path.rsplit("/", 1)[1]), {"name": self.name}, extra)
            return
        if path == "/slow":
            await asyncio.sleep(int(query.get("ms", ["1000"])[0]) / 1000)
            await _respond(send, 200, {"name": self.name, "slow": True}, extra)
            return
        if path == "/reset-after":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"1000"), *extra]})
            await send({"type": "http.response.body", "body": b"x" * 100, "more_body": True})
            raise RuntimeError("backend dies mid-body (deliberate, test)")
        if path == "/stall":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100"), *extra]})
            await send({"type": "http.response.body", "body": b"s" * 10, "more_body": True})
            await asyncio.sleep(30)  # then nothing: the proxy's idle timeout must end this
            return
        if path == "/stream":
            n = int(query.get("n", ["3"])[0])
            ms = int(query.get("ms", ["100"])[0])
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), *extra]})
            for i in range(n):
                await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
                await asyncio.sleep(ms / 1000)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if path == "/big":
            total = int(query.get("bytes", ["1048576"])[0])
            chunk = b"b" * 65536
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(total).encode()), *extra]})
            left = total
            while left > 0:
                part = chunk if left >= len(chunk) else chunk[:left]
                left -= len(part)
                await send({"type": "http.response.body", "body": part, "more_body": left > 0})
            return
        if path == "/upload":
            digest = hashlib.sha256()
            size = 0
            more = True
            while more:
                message = await receive()
                body = message.get("body", b"")
                size += len(body)
                digest.update(body)
                more = message.get("more_body", False)
            await _respond(send, 200, {"size": size, "sha256": digest.hexdigest()}, extra)
            return
        body = await _drain(receive)
        record["body_size"] = len(body)
        await _respond(send, 200, {**record, "body_size": len(body)}, extra)

    async def _ws(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        self.upgrades.append({
            "name": self.name, "raw_path": (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
        })
        protos = scope.get("subprotocols") or []
        await send({"type": "websocket.accept", "subprotocol": protos[0] if protos else None})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") == "close-me":
                await send({"type": "websocket.close", "code": 4001})
                return
            if msg.get("text") is not None:
                await send({"type": "websocket.send", "text": f"{self.name}:{msg['text']}"})
            else:
                await send({"type": "websocket.send", "bytes": msg.get("bytes") or b""})


async def _drain(receive: Any) -> bytes:
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _respond(send: Any, status: int, body: Any, extra: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": payload})


async def close_immediately(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request head, then drop the connection without a response (a reset before headers)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        import socket
        import struct

        # SO_LINGER 0: close with RST, like a crashing backend.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and read, never answer (until the test ends)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.read(65536), 30)
        await asyncio.sleep(30)
    writer.close()


@contextlib.asynccontextmanager
async def raw_server(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> AsyncIterator[str]:
    tasks: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        finally:
            tasks.discard(task)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        for writer in writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
