"""content/personas/llm.py: the LLM client against a fake local
OpenAI-compatible server (never a real network): caching, retries,
malformed answers."""

import json

import pytest

from content.personas import llm as persona_llm
from tests.content.personas.fake_llm import GOOD
from tests.content.personas.fake_llm import FakeLLM
from tests.content.personas.fake_llm import client_for


def test_llm_success_is_cached_and_resumed(tmp_path):
    with FakeLLM([(200, GOOD)]) as server:
        client = client_for(server, tmp_path)
        answer = client.complete_json(
            "sys", "item 1", persona_llm.persona_validator(2)
        )
        assert answer["personas"][0]["name"] == "Horror buff"
        path, body = server.requests[0]
        assert path == "/v1/chat/completions"
        assert body["model"] == "fake-model"
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert len(list((tmp_path / "cache").glob("*.json"))) == 1
        # A new client (a restarted build) answers from the cache.
        again = client_for(server, tmp_path)
        assert again.complete_json("sys", "item 1") == answer
        assert again.requests == 0 and again.cache_hits == 1
        assert len(server.requests) == 1


def test_llm_retries_a_server_error(tmp_path):
    with FakeLLM([(500, ""), (200, GOOD)]) as server:
        client = client_for(server, tmp_path)
        answer = client.complete_json("sys", "item 2")
        assert len(answer["personas"]) == 2
        assert client.requests == 2 and len(server.requests) == 2


def test_llm_gives_up_after_retries(tmp_path):
    with FakeLLM([(503, "")]) as server:
        client = client_for(server, tmp_path)
        with pytest.raises(persona_llm.LLMError, match="failed 3 times.*503"):
            client.complete_json("sys", "item 3")
        assert len(server.requests) == 3
    with FakeLLM([(400, "")]) as server:
        client = client_for(server, tmp_path)
        with pytest.raises(persona_llm.LLMError, match="HTTP 400"):
            client.complete_json("sys", "item 4")
        assert len(server.requests) == 1  # not retried


def test_llm_malformed_answer_is_a_clear_error_and_not_cached(tmp_path):
    with FakeLLM([(200, "Sure! Here are personas: horror fans")]) as server:
        client = client_for(server, tmp_path)
        with pytest.raises(
            persona_llm.LLMResponseError, match="not valid JSON.*Sure! Here"
        ):
            client.complete_json("sys", "item 5")
        assert not list((tmp_path / "cache").glob("*.json"))
    wrong = json.dumps({"personas": [{"name": "x", "description": ""}]})
    with FakeLLM([(200, wrong)]) as server:
        client = client_for(server, tmp_path)
        with pytest.raises(
            persona_llm.LLMResponseError, match=r"personas\[0\].description"
        ):
            client.complete_json(
                "sys", "item 6", persona_llm.persona_validator(2)
            )
    fenced = "```json\n" + GOOD + "\n```"
    assert persona_llm.parse_json_object(fenced)["personas"]
    with pytest.raises(persona_llm.LLMResponseError, match="JSON object"):
        persona_llm.parse_json_object("[1, 2]")
