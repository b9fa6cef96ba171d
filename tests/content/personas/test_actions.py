"""content/personas/actions.py: `build_personas` writes JSON lines with their
evidence, from the data or (falling back per item) from an LLM."""

import json

import pytest

import config
import data
from content.personas import actions as persona_actions
from content.personas import corpus as persona_corpus
from content.personas import generate as personas
from tests.content.personas.fake_llm import GOOD
from tests.content.personas.fake_llm import FakeLLM
from tests.content.personas.fixtures import SHARED_ITEM
from tests.content.personas.fixtures import persona_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("persona-data")
    cfg = persona_config(folder)
    dataset = data.load(cfg.data)
    corpus = persona_corpus.build_corpus(dataset, cfg.data, cfg.persona)
    return cfg, dataset, corpus


def test_build_personas_writes_jsonl_with_evidence(tiny):
    cfg, dataset, _ = tiny
    summary = persona_actions.build_personas(cfg)
    folder = cfg.run_dir / "personas"
    lines = (folder / "personas.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == summary["personas"]
    assert not list(folder.parent.glob(".personas.tmp-*"))
    shared = [r for r in records if r["item"] == SHARED_ITEM]
    assert [r["persona"] for r in shared] == [0, 1]
    evidence = shared[0]["evidence"]
    assert evidence["users"] == 12 and len(evidence["terms"]) > 0
    assert set(evidence) >= {
        "share",
        "mean_rating",
        "usual_rating",
        "example_users",
        "example_items",
    }
    assert json.loads((folder / "summary.json").read_text())["on"] == "all"
    # Read back, the personas keep their items and texts.
    loaded = personas.load_personas(folder / "personas.jsonl", dataset)
    assert len(loaded) == len(records)
    items, texts = loaded.pairs()
    assert texts[items == SHARED_ITEM].tolist() == [r["text"] for r in shared]
    # From the training split only, the held-out interactions are unused.
    summary = persona_actions.build_personas(cfg, on="train")
    assert summary["on"] == "train"
    assert summary["interactions"] < len(dataset.interactions)


def test_build_personas_with_llm_falls_back_per_item(tiny, tmp_path):
    """Answers for most items; one malformed answer keeps that item's data
    personas; a rerun resends only that request."""
    cfg, dataset, _ = tiny

    def answer(body):
        prompt = body["messages"][1]["content"]
        return "oops, no JSON" if "Item: Film 30\n" in prompt else GOOD

    with FakeLLM([(200, answer)]) as server:
        llm_cfg = config.override(
            cfg,
            [
                "persona.generator=llm",
                f"persona.llm_endpoint={server.endpoint!r}",
                "persona.llm_model=fake-model",
                "persona.llm_requests_per_minute=60000.0",
                "persona.llm_max_items=3",
                f"output.run_name={'llm'!r}",
            ],
        )
        summary = persona_actions.build_personas(llm_cfg)
        assert summary["llm"]["items_asked"] == 3
        assert summary["llm"]["items_failed"] == 1
        assert "Film 30" in summary["llm"]["first_failures"][0]
        records = [
            json.loads(line)
            for line in (llm_cfg.run_dir / "personas" / "personas.jsonl")
            .read_text()
            .splitlines()
        ]
        by_item = {}
        for r in records:
            by_item.setdefault(r["item"], []).append(r)
        shared = [r["source"] for r in by_item[SHARED_ITEM]]
        assert shared == ["data:kmeans"] * 2
        llm_items = [
            i
            for i, rs in by_item.items()
            if rs[0]["source"] == "llm:fake-model"
        ]
        assert len(llm_items) == 2
        assert by_item[llm_items[0]][0]["text"].startswith("Horror buff: ")
        # The prompt carries the item's evidence.
        prompt = server.requests[0][1]["messages"][1]["content"]
        assert "Audience groups" in prompt and "users)" in prompt
        sent = len(server.requests)
        persona_actions.build_personas(llm_cfg)
        assert len(server.requests) == sent + 1  # only the failed item
