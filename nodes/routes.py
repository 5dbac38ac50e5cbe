"""Live sessions: a running stream that takes new prompts and a stop request over HTTP.

A live node opens a :class:`LiveSession` under a random id and tells the browser that id; the
browser posts to ``/streamdit/live/{id}/prompt`` and ``/streamdit/live/{id}/stop``. The
handlers here are plain functions of the request's parts returning a :class:`Reply`, so they
are tested without a server; :func:`register_routes` wires them into ComfyUI's aiohttp app.

Nothing from a request is used as a path: the session id only looks up the registry. A body
must be a flat JSON object of the route's fields, sent as ``application/json``; anything else is
refused with a 4xx that says why, whatever its nesting.

The registry is one per process, however many copies of the pack ComfyUI loads (two folders in
``custom_nodes``): the nodes of the copy loaded last run, the routes of the first serve, and
both find the same sessions; the second copy says in the log that the pack is installed twice.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 1000  # a prompt longer than this is refused (413)
MAX_BODY_BYTES = 16 * 1024  # a request body longer than this is refused unread (413)
_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class LiveSession:
    """What a running live node and the HTTP handlers share (guarded by a lock)."""

    id: str
    node_id: str | None = None
    _pending: str | None = None
    _stop: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def post_prompt(self, prompt: str) -> None:
        with self._lock:
            self._pending = prompt

    def take_prompt(self) -> str | None:
        """The newest prompt posted since the last call (earlier ones are superseded)."""
        with self._lock:
            prompt, self._pending = self._pending, None
            return prompt

    def request_stop(self) -> None:
        with self._lock:
            self._stop = True

    @property
    def stopping(self) -> bool:
        with self._lock:
            return self._stop


_REGISTRY = "streamdit_live_registry"  # a module name: one registry per process, shared by every copy of the pack


def _registry() -> types.ModuleType:
    """The process-wide registry: ``sessions`` (id -> session), its ``lock``, and ``routes_from``
    (the pack folder whose routes are registered, or None)."""
    registry = sys.modules.get(_REGISTRY)
    if registry is None:
        registry = types.ModuleType(_REGISTRY, "Live StreamDiT sessions of this process.")
        registry.sessions, registry.lock, registry.routes_from = {}, threading.Lock(), None
        registry = sys.modules.setdefault(_REGISTRY, registry)
    return registry


def open_session(node_id: str | None = None) -> LiveSession:
    session = LiveSession(secrets.token_hex(16), node_id)
    registry = _registry()
    with registry.lock:
        registry.sessions[session.id] = session
    return session


def close_session(session: LiveSession) -> None:
    registry = _registry()
    with registry.lock:
        registry.sessions.pop(session.id, None)


def session_ids() -> list[str]:
    """The ids of the live sessions running in this process."""
    registry = _registry()
    with registry.lock:
        return list(registry.sessions)


def find_session(session_id: str) -> LiveSession | None:
    if not isinstance(session_id, str) or not _SESSION_ID.match(session_id):
        return None
    registry = _registry()
    with registry.lock:
        return registry.sessions.get(session_id)


# ------------------------------------------------------------------------------ HTTP handlers

@dataclass(frozen=True)
class Reply:
    status: int
    body: dict


def _error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})


JSON = "application/json"


def _json_object(body: bytes, content_type: str, fields: tuple[str, ...]) -> dict | Reply:
    """The body as a flat JSON object whose keys are among ``fields``, or the error reply."""
    if len(body) > MAX_BODY_BYTES:
        return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
    if content_type.split(";")[0].strip().lower() != JSON:
        return _error(415, f"send the body as {JSON} (got {content_type or 'no content type'!r})")
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return _error(400, f"the body is not valid JSON: {err}")
    except RecursionError:
        return _error(400, "the body is nested too deeply; send a flat JSON object")
    if not isinstance(data, dict):
        return _error(400, "the body must be a JSON object")
    unknown = sorted(k for k in data if k not in fields)
    if unknown:
        expected = ", ".join(repr(f) for f in fields) or "no fields"
        return _error(400, f"unknown field(s) {', '.join(repr(k) for k in unknown)[:200]}; this route takes {expected}")
    return data


def _request(session_id: str, body: bytes, content_type: str,
             fields: tuple[str, ...]) -> tuple[LiveSession, dict] | Reply:
    """The running session and the JSON object a request names, or the error reply."""
    session = find_session(session_id)
    if session is None:
        return _error(404, "no live stream with this id is running")
    data = _json_object(body, content_type, fields)
    return data if isinstance(data, Reply) else (session, data)


def handle_prompt(session_id: str, body: bytes, content_type: str = JSON) -> Reply:
    """``POST /streamdit/live/{session}/prompt`` with ``{"prompt": "..."}``."""
    request = _request(session_id, body, content_type, ("prompt",))
    if isinstance(request, Reply):
        return request
    session, data = request
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        return _error(400, 'the body must be {"prompt": "<text>"} with a string prompt')
    if len(prompt) > MAX_PROMPT_CHARS:
        return _error(413, f"the prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    if not prompt.strip():
        return _error(400, "the prompt is empty")
    session.post_prompt(prompt.strip())
    return Reply(200, {"ok": True, "prompt": prompt.strip()})


def handle_stop(session_id: str, body: bytes, content_type: str = JSON) -> Reply:
    """``POST /streamdit/live/{session}/stop`` (an empty body or ``{}``)."""
    request = _request(session_id, body, content_type, ())
    if isinstance(request, Reply):
        return request
    request[0].request_stop()
    return Reply(200, {"ok": True})


def register_routes(routes, web) -> bool:
    """Adds the live routes to ComfyUI's route table (``routes``: aiohttp RouteTableDef), once
    per process: a second copy of the pack logs that it is installed twice and adds nothing
    (the routes already there serve its sessions too). Returns whether routes were added."""
    here = str(Path(__file__).resolve().parents[1])
    registry = _registry()
    with registry.lock:
        first, registry.routes_from = registry.routes_from, registry.routes_from or here
    if first == here:  # this copy registered them already
        return False
    if first is not None:
        log.warning("ComfyUI-StreamDiT is installed twice: %s and %s. The nodes of the copy loaded last run; "
                    "remove one of the folders from custom_nodes.", first, here)
        return False

    def wrap(handler):
        async def route(request):
            if (request.content_length or 0) > MAX_BODY_BYTES:
                reply = _error(413, f"request body over {MAX_BODY_BYTES} bytes")
            else:
                body = await request.content.read(MAX_BODY_BYTES + 1)
                reply = handler(request.match_info["session"], body, request.headers.get("Content-Type", ""))
            return web.json_response(reply.body, status=reply.status)

        return route

    routes.post("/streamdit/live/{session}/prompt")(wrap(handle_prompt))
    routes.post("/streamdit/live/{session}/stop")(wrap(handle_stop))
    return True
