"""Tests for distribution.py: keras.distribution data and model parallel
training on several (virtual CPU) devices matches one device; the
configuration errors; each process's slice of a global batch."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import config
import data
import recommenders
import train
from runtime import distribution
from runtime import seeding
from tests.conftest import ROOT
from tests.conftest import tiny_config

JAX_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution is implemented for the JAX backend only",
)
NUM_DEVICES = 4
# Runs in a fresh process: XLA_FLAGS must be set before JAX starts, and a
# process cannot change its device count afterwards.
MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, pathlib, sys
    sys.path[:0] = [sys.argv[1]]
    import keras
    import config, data, recommenders, train
    from runtime import distribution, seeding
    from tests.conftest import tiny_config

    out = {"devices": len(keras.distribution.list_devices())}
    for name in ("data_parallel", "model_parallel"):
        out[name] = run(name)
    try:
        with distribution.training_scope(
            config.ScaleConfig(distribution="data_parallel"), 30
        ):
            pass
    except ValueError as e:
        out["batch_error"] = str(e)
    print("RESULT " + json.dumps(out))
    """
)
RUN_FUNCTION = textwrap.dedent(
    """
    def run(name):
        cfg = tiny_config(pathlib.Path(sys.argv[2]),
                          f"scale.distribution={name!r}")
        seeding.set_seed(0)
        dataset = data.load(cfg.data)
        train_, _, test = data.split(dataset.interactions, "chrono", 0.1, 0.2)
        rec = recommenders.build(cfg, dataset)
        rec.fit(train_, None)
        metrics = train.evaluate_split(rec, test, train_, cfg).summary()
        table = rec.model.item_embedding.embeddings.value
        return {
            "loss": rec.fit_history["loss"],
            "ndcg@10": metrics["ndcg@10"],
            "recall@20": metrics["recall@20"],
            "sharding": str(table.sharding),
        }
    """
)


@JAX_ONLY
def test_data_and_model_parallel_match_one_device(tmp_path):
    """Single device (this process) vs DataParallel and ModelParallel over 4
    virtual CPU devices (a child process, run at the same time): same
    losses and test metrics within float noise, with the embedding tables
    really sharded under ModelParallel."""
    single_cfg = tiny_config(tmp_path)  # writes the data the child reads
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}",
    )
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RUN_FUNCTION + MULTI_DEVICE_SCRIPT,
            str(ROOT),
            str(tmp_path),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    single = _run_single(single_cfg)
    stdout, stderr = child.communicate(timeout=600)
    assert child.returncode == 0, stderr[-3000:]
    result = json.loads(
        [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1][7:]
    )
    assert result["devices"] == NUM_DEVICES
    assert "Mesh('batch': 4" in result["data_parallel"]["sharding"]
    assert "'model': 2" in result["model_parallel"]["sharding"]
    assert "P(None, 'model')" in result["model_parallel"]["sharding"]
    for name in ("data_parallel", "model_parallel"):
        got = result[name]
        np.testing.assert_allclose(got["loss"], single["loss"], rtol=1e-3)
        for metric in ("ndcg@10", "recall@20"):
            assert got[metric] == pytest.approx(single[metric], abs=0.02)
    assert "multiple of the 4 devices" in result["batch_error"]


def _run_single(cfg):
    seeding.set_seed(0)
    dataset = data.load(cfg.data)
    train_, _, test = data.split(dataset.interactions, "chrono", 0.1, 0.2)
    rec = recommenders.build(cfg, dataset)
    rec.fit(train_, None)
    metrics = train.evaluate_split(rec, test, train_, cfg).summary()
    return {"loss": rec.fit_history["loss"], **metrics}


@pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="the non-JAX error message"
)
def test_non_jax_backend_points_to_tf_strategies():
    with pytest.raises(ValueError, match="JAX backend only.*MirroredStrategy"):
        distribution.make_distribution("data_parallel")


@JAX_ONLY
def test_mesh_must_fit_the_devices():
    devices = keras.distribution.list_devices()
    with pytest.raises(ValueError, match="divide the number of devices"):
        distribution.make_distribution(
            "model_parallel", model_parallel=len(devices) + 1
        )


def test_configuration_errors():
    with pytest.raises(ValueError, match="scale.distribution"):
        distribution.make_distribution("pipeline")
    bad = config.ScaleConfig(mixed_precision="float8")
    with pytest.raises(ValueError, match="scale.mixed_precision"):
        with distribution.training_scope(bad, 32):
            pass


def test_no_distribution_is_a_no_op():
    assert distribution.make_distribution("none") is None
    assert distribution.batch_multiple() == 1
    assert distribution.initialize_multi_host() is False


def test_training_scope_restores_policy():
    before = keras.config.dtype_policy().name
    scale = config.ScaleConfig(mixed_precision="mixed_bfloat16")
    with distribution.training_scope(scale, 32):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == before


def test_process_shards_cover_each_global_batch_once():
    x = data.Interactions(
        user=np.arange(40) % 7,
        item=np.arange(40) % 11,
        value=np.ones(40),
        ts=np.arange(40),
        num_users=7,
        num_items=11,
    )
    batches = data.InteractionBatches(x, 8, seed=3)
    shards = [distribution.ProcessShard(batches, p, 4) for p in range(4)]
    assert len(shards[0]) == len(batches)
    for idx in range(len(batches)):
        full, _ = batches[idx]
        parts = [shard[idx][0] for shard in shards]
        assert all(len(p["user"]) == 2 for p in parts)
        for key in full:
            np.testing.assert_array_equal(
                np.concatenate([p[key] for p in parts]), full[key]
            )
    with pytest.raises(ValueError, match="does not split over 3"):
        distribution.ProcessShard(batches, 0, 3)[0]
    with pytest.raises(ValueError, match="process_id"):
        distribution.ProcessShard(batches, 4, 4)
