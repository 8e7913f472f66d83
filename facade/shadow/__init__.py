"""Shadow traffic: mirror a copy of a route's requests to the candidate and diff the two answers.

Envoy's ``request_mirror_policies`` for the sending, Twitter's Diffy for the comparing. Per mirrored
request, in order:

1. ``begin()`` (proxy, before forwarding): refuse unsafe methods the split does not allow, and refuse
   when the sender is at capacity (counted as a drop); else hand out a ticket, which reserves a slot;
2. the proxy forwards the primary request as usual, keeping bounded copies (``ticket.max_body``) of
   the request body and the primary response body;
3. ``submit()`` (proxy, after the client has its whole response) queues the copy, or ``cancel()``
   releases the slot when the primary failed;
4. a fixed pool of worker tasks sends the copy to the candidate (marker header ``x-facade-shadow: 1``,
   Host suffixed ``-shadow``) and, to learn noise, a second copy to the primary; both with a timeout,
   through the service's own HTTP/1.1 client (its connections and ``max_connections``; a copy that
   finds every connection busy is not sent: it never waits for, or takes, a connection the proxy needs);
5. the responses are diffed (ignore rules, learned noise), the comparison is counted in telemetry
   (the ``diff_rate`` gate reads it) and a differing one is kept, redacted, in a bounded ring.

Nothing here raises into the proxy, and nothing runs before the client has its answer: the primary
response is never changed and never waits. Memory is bounded by the slot count (``concurrency +
queue_size`` copies of at most ``max_body`` bytes each) and by ``max_queued_bytes``.

``ShadowFeature`` attaches a sender to a runtime and serves ``GET /compare``, ``GET /diffs`` and
``GET /shadow`` on the admin listener.

The package: ``policy`` (pure decisions), ``sender`` (the copies and their diffs), ``feature``
(the admin endpoints), ``process`` and ``child`` (``shadow.sender: process``: the copies handed to a
child process that runs the sender), and ``facade.diff`` (comparing two responses; kept outside:
config and plans read its rules).
"""

from __future__ import annotations

from .feature import ShadowFeature, resolve_step
from .policy import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_TIMEOUT,
    SAFE_METHODS,
    SHADOW_HEADER,
    decoded,
    mirrorable,
    mirrored_headers,
    parse_window,
    shadow_host,
)
from .sender import ShadowOptions, ShadowSender, ShadowTicket, sender_options

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_TIMEOUT",
    "SAFE_METHODS",
    "SHADOW_HEADER",
    "ShadowFeature",
    "ShadowOptions",
    "ShadowSender",
    "ShadowTicket",
    "decoded",
    "mirrorable",
    "mirrored_headers",
    "parse_window",
    "resolve_step",
    "sender_options",
    "shadow_host",
]
