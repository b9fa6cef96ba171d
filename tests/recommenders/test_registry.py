"""recommenders/registry.py: one registry, one door in, one way back."""

import dataclasses

import numpy as np
import pytest

import config
import data
import recommenders
from eval import baselines
from recommenders import registry


def test_every_family_is_registered_once_with_its_kind():
    names = recommenders.names()
    assert len(names) == len(set(names))
    assert {"two_tower", "ncf", "multimodal", "persona"} <= set(names)
    assert set(recommenders.names("baseline")) == set(baselines.BASELINES)
    assert recommenders.get("two_tower").default_loss == "softmax"
    assert recommenders.get("ncf").pointwise
    assert recommenders.get("persona").kind == "reranker"


def test_registering_a_taken_name_fails():
    family = recommenders.get("ease")
    with pytest.raises(ValueError, match="registered"):
        recommenders.register(family)


def test_a_new_family_is_one_registration(tiny_cfg):
    """The worked example of docs/architecture.md: register, then build
    through the one door like any other family."""
    family = registry.Family(
        name="test_popular_twice",
        kind="baseline",
        build=lambda cfg, dataset: baselines.MostPopular(),
        section="model",
        summary="a test family",
    )
    recommenders.register(family)
    try:
        cfg = dataclasses.replace(
            tiny_cfg,
            model=dataclasses.replace(
                tiny_cfg.model, name="test_popular_twice"
            ),
        )
        recommenders.check_names(cfg)
        dataset = data.load(cfg.data)
        rec = recommenders.build(cfg, dataset)
        rec.fit(dataset.interactions)
        assert rec.score(np.arange(3)).shape == (3, 30)
    finally:
        registry._FAMILIES.pop("test_popular_twice")


def test_unknown_names_are_rejected_before_any_data_is_read(tiny_cfg):
    for key in ("model.name", "persona.first_stage"):
        cfg = config.override(tiny_cfg, [f"{key}='deepfm'"])
        with pytest.raises(ValueError, match=f"`{key}`.*deepfm.*two_tower"):
            recommenders.check_names(cfg)
    cfg = config.override(tiny_cfg, ["eval.baselines=('ease', 'foo')"])
    with pytest.raises(ValueError, match="eval.baselines.*foo"):
        recommenders.check_names(cfg)
    cfg = config.override(tiny_cfg, ["model.name='deepfm'"])
    with pytest.raises(ValueError, match="two_tower"):
        recommenders.build(cfg, None)


def test_every_recommender_meets_the_interface(tiny_cfg, tmp_path):
    dataset = data.load(tiny_cfg.data)
    for name in ("two_tower", "ncf", "ease", "most_popular"):
        cfg = config.override(tiny_cfg, [f"model.name={name!r}"])
        rec = recommenders.build(cfg, dataset)
        assert isinstance(rec, recommenders.Recommender), name
        rec.fit(dataset.interactions, None)
        assert isinstance(rec.refit_params(), dict)
        assert rec.metadata()["kind"] in ("keras", "baseline")
        rec.save(tmp_path / name)
        loaded = recommenders.load(tmp_path / name)
        users = np.arange(4)
        np.testing.assert_allclose(
            loaded.score(users), rec.score(users), rtol=1e-5, atol=1e-5
        )


def test_load_names_an_unknown_kind(tmp_path):
    (tmp_path / "recommender.json").write_text('{"kind": "quantum"}')
    with pytest.raises(ValueError, match="quantum"):
        recommenders.load(tmp_path)
