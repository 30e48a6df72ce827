"""A reply from an engine that streams reaches the participant as it grows: the event
stream sends the text so far (`partial`), then the reply as stored (`reply`)."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient

from stancelab.engine._fake import FakeChatModel
from stancelab.study._app import create_app
from stancelab.study._store import StudyStore

from .conftest import SECRET, Participant, make_config


def test_a_streamed_reply_grows_on_the_event_stream_and_is_stored_whole(
    store: StudyStore,
) -> None:
    lm = FakeChatModel(
        reply=lambda _request: "Droughts matter to farmers. Crops fail when rain does not come.",
        delay_s=1.2,  # spread over the words: the stream sees the text grow
    )
    assert lm.supports_streaming()
    app = create_app(make_config(), store, lm, secret=SECRET)
    p = Participant(TestClient(app, follow_redirects=True)).through_before("STREAM")
    sent = p.client.post(
        "/study/message",
        data={"csrf": p.csrf, "turn": "1", "message": "Hi.", "key": p.key, "stance": "same"},
        headers={"X-Study-Async": "1"},
    )
    stream = sent.json()["stream"]
    with p.client.stream("GET", stream) as events:
        body = "".join(events.iter_text())
    found = re.findall(r"event: (\w+)\ndata: (.*)\n", body)
    partials = [json.loads(d)["text"] for name, d in found if name == "partial"]
    finals = [json.loads(d)["text"] for name, d in found if name == "reply"]
    stored = next(m for m in store.messages(store.participants()[0].id) if m.role == "assistant")
    assert (
        finals
        == [stored.text]
        == ["Droughts matter to farmers. Crops fail when rain does not come."]
    )
    # the text grew in view: at least one partial before the whole reply, each a prefix
    assert partials and partials[0] != stored.text
    assert all(stored.text.startswith(text) for text in partials)
