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
    ({"text": "a"}, 400, "string prompt"),
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


def test_routes_register_on_an_aiohttp_style_table():
    seen = {}

    class Table:
        def post(self, path):
            return lambda handler: seen.setdefault(path, handler)

    routes.register_routes(Table(), web=None)
    assert set(seen) == {"/streamdit/live/{session}/prompt", "/streamdit/live/{session}/stop"}
