"""Cost of the request-head rules (issue 10): the pure checks per request, and a hostile head end to end.

    python benchmarks/bench_request_head.py

1. ``screen_headers`` + the absolute-form test for an ordinary 8-field head (what every request pays),
   next to ``normalize_path`` for the same request (for scale);
2. a real facade (loopback, one echo backend): median latency of an ordinary request and of a head of
   11,000 empty ``a:`` fields (44 KB, under the 60 KiB size limit), which is now refused with 431.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import timeit
from pathlib import Path

from facade.normalize import normalize_path
from facade.request_head import screen_headers, split_absolute_form
from tests.backends import EchoApp
from tests.harness import run_facade
from tests.servers import serve_app

HEAD = [
    (b"host", b"shop.local"),
    (b"user-agent", b"bench"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip"),
    (b"cookie", b"session_id=abc"),
    (b"x-request-id", b"abc"),
    (b"content-length", b"0"),
    (b"connection", b"keep-alive"),
]


def micro(number: int = 200_000) -> None:
    def head_rules() -> None:
        url = b"/catalog/items/42"
        if url[:1] != b"/":
            split_absolute_form(url)
        screen_headers(HEAD, max_count=100, underscores="drop")

    for label, fn in (
        ("head rules, 8 fields", head_rules),
        ("normalize_path", lambda: normalize_path(b"/catalog/items/42")),
    ):
        best = min(timeit.repeat(fn, number=number, repeat=5)) / number
        print(f"{label:28s} {best * 1e6:6.2f} µs")


async def end_to_end(rounds: int = 60) -> None:
    echo = EchoApp()
    with tempfile.TemporaryDirectory() as tmp:
        async with serve_app(echo) as url:
            text = f"state_dir: {tmp}/s\nservices:\n  svc: {{endpoints: [{url}]}}\nroutes:\n  - {{name: all, backend: svc}}\n"
            async with run_facade(Path(tmp), text) as rt:
                port = int(rt.url.rsplit(":", 1)[1])
                for label, lines in (("ordinary head", ["accept: */*"] * 6), ("11,000 'a:' fields", ["a:"] * 11_000)):
                    raw = "GET /x HTTP/1.1\r\nHost: s\r\n" + "".join(f"{line}\r\n" for line in lines)
                    raw += "Connection: close\r\n\r\n"
                    times, status = [], b""
                    for _ in range(rounds):
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                        t0 = time.perf_counter()
                        writer.write(raw.encode())
                        data = await reader.read()
                        times.append(time.perf_counter() - t0)
                        status = data[9:12]
                        writer.close()
                    print(f"{label:28s} {status.decode()} median {statistics.median(times[10:]) * 1000:.2f} ms")


if __name__ == "__main__":
    micro()
    asyncio.run(end_to_end())
