"""The live routes: what a browser may post, and what it is refused."""

import json

import pytest

from nodes import routes


@pytest.fixture
def session():
    live = routes.open_session("12")
    yield live
    routes.close_session(live)


def _post(handler, session_id, body):
    return handler(session_id, body if isinstance(body, bytes) else json.dumps(body).encode())


def test_a_prompt_reaches_the_running_session(session):
    reply = _post(routes.handle_prompt, session.id, {"prompt": "  a blue circle  "})
    assert reply.status == 200 and reply.body["prompt"] == "a blue circle"
    _post(routes.handle_prompt, session.id, {"prompt": "a green square"})
    assert session.take_prompt() == "a green square"  # the newest wins
    assert session.take_prompt() is None


def test_stop_sets_the_flag(session):
    assert not session.stopping
    assert _post(routes.handle_stop, session.id, b"").status == 200
    assert session.stopping


@pytest.mark.parametrize("session_id", ["0" * 32, "../../etc/passwd", "", "A" * 32])
def test_unknown_sessions_are_404(session, session_id):
    for handler in (routes.handle_prompt, routes.handle_stop):
        reply = _post(handler, session_id, {"prompt": "x"})
        assert reply.status == 404 and "no live stream" in reply.body["error"]


@pytest.mark.parametrize("body,status,words", [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    ([1, 2], 400, "JSON object"),
    ({"prompt": 3}, 400, "string prompt"),
    ({"text": "a"}, 400, "unknown field(s) 'text'"),
    ({"prompt": "   "}, 400, "empty"),
    ({"prompt": "x" * (routes.MAX_PROMPT_CHARS + 1)}, 413, "limit is 1000"),
    (b"{" + b" " * routes.MAX_BODY_BYTES + b"}", 413, "request body over"),
])
def test_bad_prompts_are_refused_and_change_nothing(session, body, status, words):
    reply = _post(routes.handle_prompt, session.id, body)
    assert reply.status == status and words in reply.body["error"]
    assert session.take_prompt() is None


def test_a_closed_session_is_gone(session):
    routes.close_session(session)
    assert _post(routes.handle_prompt, session.id, {"prompt": "x"}).status == 404


class _Table:
    """An aiohttp-style route table that records what is added."""

    def __init__(self):
        self.seen = {}

    def post(self, path):
        return lambda handler: self.seen.setdefault(path, handler)


def test_routes_register_on_an_aiohttp_style_table(monkeypatch):
    monkeypatch.setattr(routes._registry(), "routes_from", None)
    table = _Table()
    assert routes.register_routes(table, web=None)
    assert set(table.seen) == {"/streamdit/live/{session}/prompt", "/streamdit/live/{session}/stop"}


def test_a_second_copy_of_the_pack_registers_no_routes_and_says_so(monkeypatch, caplog, session):
    """Two folders of the pack in custom_nodes: the second adds no routes, the log names both
    folders, and the routes already there find the sessions the second copy's nodes open."""
    monkeypatch.setattr(routes._registry(), "routes_from", "/elsewhere/ComfyUI-StreamDiT")
    table = _Table()
    with caplog.at_level("WARNING"):
        assert not routes.register_routes(table, web=None)
    assert table.seen == {} and "installed twice: /elsewhere/ComfyUI-StreamDiT and" in caplog.text
    import importlib.util

    import sys

    spec = importlib.util.spec_from_file_location("second_copy_routes", routes.__file__)
    second = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "second_copy_routes", second)
    spec.loader.exec_module(second)  # the other copy's own module objects
    live = second.open_session("7")
    try:
        assert _post(routes.handle_prompt, live.id, {"prompt": "a red square"}).status == 200
        assert live.take_prompt() == "a red square"
    finally:
        second.close_session(live)


def test_any_body_that_is_not_a_flat_object_of_the_fields_is_a_400(session):
    deep = b"[" * 5000 + b"]" * 5000  # under the size limit, deeper than the parser recurses
    assert len(deep) < routes.MAX_BODY_BYTES
    for body in (deep, b'{"prompt": ' + deep + b"}", {"prompt": "x", "more": [[[1]]]}, {"prompt": {"text": "x"}}):
        reply = _post(routes.handle_prompt, session.id, body)
        assert reply.status == 400, (body[:20], reply)
    assert "nested too deeply" in _post(routes.handle_prompt, session.id, deep).body["error"]
    assert "unknown field(s) 'more'" in _post(routes.handle_prompt, session.id, {"prompt": "x", "more": 1}).body["error"]
    assert _post(routes.handle_stop, session.id, {"now": True}).status == 400
    assert session.take_prompt() is None and not session.stopping


def test_the_routes_take_json_only(session):
    body = json.dumps({"prompt": "a red square"}).encode()
    for content_type in ("text/plain", "", "application/x-www-form-urlencoded"):
        reply = routes.handle_prompt(session.id, body, content_type)
        assert reply.status == 415 and "application/json" in reply.body["error"]
        assert routes.handle_stop(session.id, b"", content_type).status == 415
    assert routes.handle_prompt(session.id, body, "application/json; charset=utf-8").status == 200
    assert session.take_prompt() == "a red square" and not session.stopping
