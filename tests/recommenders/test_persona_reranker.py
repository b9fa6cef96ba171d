"""recommenders/persona_reranker.py: the PersonaReranker end to end on tiny
data (fit, refit, score, save/load, the template actions) and its blend."""

import json

import numpy as np
import pytest

import data
import recommenders
import train
from recommenders import persona_reranker
from recommenders.persona_reranker import PersonaReranker
from serving import retrieval
from tests.content.personas.fixtures import persona_config


def test_standardised_blend_ignores_invalid_slots():
    scores = np.array([[1.0, 2.0, 3.0, 99.0]])
    valid = np.array([[True, True, True, False]])
    z = persona_reranker._standardise(scores, valid)
    np.testing.assert_allclose(z[0, :3], [-1.2247449, 0, 1.2247449], atol=1e-6)
    assert z[0, 3] == 0.0


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """`train_validation_model` with `model.name=persona` (fit on train
    selecting the encoder epoch on valid, refit on train+valid with the
    refit parameters), and the saved validation model loaded back."""
    folder = tmp_path_factory.mktemp("persona-model")
    cfg = persona_config(folder, "data.split=leave_last_out")
    report = train.train_validation_model(cfg)
    dataset = data.load(cfg.data)
    tr, _, _ = data.split(dataset.interactions, "leave_last_out")
    rec = recommenders.load(cfg.run_dir / "validation" / "model_train_only")
    return cfg, dataset, report, rec, tr


def test_persona_through_train_validation_model(fitted):
    cfg, _, report, rec, _ = fitted
    entry = report["models"]["persona"]
    assert entry["best_epoch"] in (1, 2)
    assert len(entry["history"]["loss"]) >= entry["best_epoch"]
    assert "val_loss" in entry["history"]
    assert "ndcg@10" in entry["test"]["summary"]
    saved = cfg.run_dir / "validation" / "model_train_only"
    info = json.loads((saved / "recommender.json").read_text())
    assert info["kind"] == "persona"
    assert info["params"]["num_personas"] == 2
    assert (saved / "first_stage" / "config.json").exists()
    assert isinstance(rec, PersonaReranker)
    assert rec.refit_params() == {"epochs": entry["best_epoch"]}


def test_reranker_scores_lift_candidates(fitted):
    _, dataset, _, rec, known = fitted
    users = np.arange(dataset.interactions.num_users)
    scores = rec.score(users)
    assert scores.shape == (len(users), dataset.interactions.num_items)
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    # The M candidates (unseen, first-stage top) are lifted above the rest.
    base = rec.first_stage.score(users)
    cand, _, valid = rec.candidates_for(users, base)
    seen = known.to_csr().toarray() > 0
    assert not seen[np.arange(len(users))[:, None], cand][valid].any()
    for u in users[:5]:
        others = np.setdiff1d(np.flatnonzero(~seen[u]), cand[u])
        assert scores[u, cand[u][valid[u]]].min() > scores[u, others].max()
    # Item subsets are columns of the full scores.
    np.testing.assert_allclose(
        rec.score(users[:3], np.array([4, 1])), scores[:3][:, [4, 1]]
    )


def test_blend_weight_zero_keeps_first_stage_order(fitted):
    rec = fitted[3]
    users = np.arange(6)
    base = rec.first_stage.score(users)
    cand, base_c, valid = rec.candidates_for(users, base)
    saved = rec.blend_weight
    rec.blend_weight = 0.0
    try:
        blended = rec.rerank(users, cand, base_c, valid)
    finally:
        rec.blend_weight = saved
    np.testing.assert_allclose(
        blended, persona_reranker._standardise(base_c, valid), atol=1e-6
    )
    persona = rec.persona_scores(rec.user_profiles[users], cand)
    assert persona.shape == cand.shape
    assert (np.abs(persona) <= 1.0 + 1e-5).all()
    with pytest.raises(ValueError, match="blend_weight"):
        rec.blend_weight = 1.5


def test_reranker_save_load_and_recommend(fitted, tmp_path):
    _, dataset, _, rec, known = fitted
    rec.save(tmp_path / "model")
    loaded = recommenders.load(tmp_path / "model")
    users = np.arange(dataset.interactions.num_users)
    np.testing.assert_allclose(loaded.score(users), rec.score(users), atol=1e-5)
    profiles = loaded.encode_profiles(
        loaded.profile_inputs["profile"][:2],
        loaded.profile_inputs["profile_weights"][:2],
    )
    np.testing.assert_allclose(profiles, rec.user_profiles[:2], atol=1e-4)
    items, scores = retrieval.top_k_by_score(
        loaded, users, known.to_csr(), 5, progress=False
    )
    assert items.shape == (len(users), 5) and np.isfinite(scores).all()
    with pytest.raises(ValueError, match="persona_source"):
        loaded.fit(known)
