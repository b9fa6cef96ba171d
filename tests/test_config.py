"""Tests for config.py: the dataclass tree, CLI overrides, JSON round-trip,
presets, and that every field is read somewhere in the code."""

import ast
import dataclasses
import json
import pathlib
import typing

import numpy as np
import pytest

import config

ROOT = pathlib.Path(config.__file__).resolve().parent
SECTIONS = {
    "data": config.DataConfig,
    "model": config.ModelConfig,
    "train": config.TrainConfig,
    "eval": config.EvalConfig,
    "output": config.OutputConfig,
    "scale": config.ScaleConfig,
    "persona": config.PersonaConfig,
    "diffusion": config.DiffusionConfig,
    "serve": config.ServeConfig,
    "track": config.TrackConfig,
    "multimodal": config.MultimodalConfig,
    "decode": config.DecodeConfig,
    "tune": config.TuneConfig,
}


# ---------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------


def test_tree_of_frozen_dataclasses():
    cfg = config.Config()
    for name, cls in SECTIONS.items():
        section = getattr(cfg, name)
        assert type(section) is cls
        assert cls.__dataclass_params__.frozen, name
    assert type(cfg.data.item_features) is config.FeatureFileConfig
    assert type(cfg.data.user_features) is config.FeatureFileConfig
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.item_features.path = None


def test_every_leaf_has_a_type_and_a_default():
    def walk(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.name in hints, f"{cls.__name__}.{f.name} has no type"
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name])
            else:
                has_default = (
                    f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING
                )
                assert has_default, f"{cls.__name__}.{f.name} has no default"

    walk(config.Config)


def test_data_config_describes_a_new_dataset():
    """Everything needed to read another dataset is a DataConfig field."""
    data_fields = {f.name for f in dataclasses.fields(config.DataConfig)}
    assert {
        "path",
        "format",
        "sep",
        "header",
        "column_names",
        "encoding",
        "user_col",
        "item_col",
        "rating_col",
        "timestamp_col",
        "implicit_threshold",
        "duplicates",
        "min_user_interactions",
        "min_item_interactions",
        "item_features",
        "user_features",
    } <= data_fields
    feature_fields = {
        f.name for f in dataclasses.fields(config.FeatureFileConfig)
    }
    assert {
        "path",
        "format",
        "header",
        "column_names",
        "id_col",
        "categorical",
        "numeric",
        "multivalued",
        "multivalued_sep",
        "text",
    } <= feature_fields


def test_default_points_at_shipped_movielens():
    cfg = config.default()
    assert cfg == config.Config()
    assert cfg.data.path.is_file() and cfg.data.path.name == "ratings.csv"
    assert cfg.data.item_features.path.is_file()
    assert cfg.data.item_features.multivalued == ("genres",)
    assert cfg.data.user_features.path is None
    assert cfg.run_dir == pathlib.Path("runs") / "sasrec"  # auto


def test_new_dataset_needs_only_config_edits(tmp_path):
    """A `::` file without header plus a tsv item-feature file, loaded
    through overrides alone (what `--set` does on the command line)."""
    import data  # the consumer; imported here to keep config tests light

    ratings = tmp_path / "ratings.dat"
    ratings.write_text(
        "1::10::5::978300760\n1::20::3::978300761\n2::10::4::978300762\n"
        "2::30::1::978300763\n3::20::2::978300764\n",
        encoding="utf-8",
    )
    items = tmp_path / "items.tsv"
    items.write_text(
        "item\tkind\tgenres\tyear\tname\n"
        "10\ta\tComedy|Drama\t1995\tToy Story\n"
        "20\tb\tDrama\t1999\tHeat\n",
        encoding="utf-8",
    )
    cfg = config.override(
        config.tiny(),
        [
            f"data.path={ratings}",
            "data.header=False",
            "data.column_names=('u', 'i', 'r', 't')",
            "data.user_col=u",
            "data.item_col=i",
            "data.rating_col=r",
            "data.timestamp_col=t",
            "data.implicit_threshold=3",
            "data.min_user_interactions=1",
            f"data.item_features.path={items}",
            "data.item_features.id_col=item",
            "data.item_features.categorical=kind",
            "data.item_features.multivalued=('genres',)",
            "data.item_features.numeric=year",
            "data.item_features.text=name",
            "data.item_features.text_buckets=8",
        ],
    )
    ds = data.load(cfg.data)
    assert ds.user_ids.tolist() == [1, 2]  # user 3 only rated 2: dropped
    assert ds.item_ids.tolist() == [10, 20]
    assert len(ds.interactions) == 3
    names = ds.item_features.names
    assert "kind=a" in names and "genres=Comedy" in names
    assert "year" in names and "name#0" in names
    np.testing.assert_array_equal(ds.item_features.missing, [False, False])


# ---------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------


def test_override_simple_and_leaves_original():
    cfg = config.Config()
    new = config.override(cfg, ["train.epochs=3"])
    assert new.train.epochs == 3
    assert cfg.train.epochs == 40  # frozen: a new tree, old one untouched
    assert new.model == cfg.model and new.data == cfg.data
    assert config.override(cfg, ["--train.epochs=5"]).train.epochs == 5
    assert config.override(cfg, [" train.epochs = 6 "]).train.epochs == 6
    assert config.override(cfg, []) == cfg


def test_override_applies_in_order():
    cfg = config.override(
        config.Config(), ["train.epochs=3", "seed=1", "train.epochs=4"]
    )
    assert (cfg.train.epochs, cfg.seed) == (4, 1)


@pytest.mark.parametrize(
    "assignment, key",
    [
        ("train.epoch=3", "train.epoch"),
        ("training.epochs=3", "training.epochs"),
        ("epochs=3", "epochs"),
        ("data.item_features.colour=red", "data.item_features.colour"),
        ("train.epochs.max=3", "train.epochs.max"),
    ],
)
def test_unknown_key_names_the_key(assignment, key):
    with pytest.raises(ValueError, match=f"Unknown config key `{key}`"):
        config.override(config.Config(), [assignment])


def test_setting_a_whole_section_is_refused():
    with pytest.raises(ValueError, match="`train` is a section"):
        config.override(config.Config(), ["train=3"])
    with pytest.raises(ValueError, match="`data.item_features` is a section"):
        config.override(config.Config(), ["data.item_features=None"])


@pytest.mark.parametrize("assignment", ["train.epochs", "=3", "--=3"])
def test_malformed_assignment(assignment):
    with pytest.raises(ValueError, match="section.field=value"):
        config.override(config.Config(), [assignment])


@pytest.mark.parametrize(
    "assignment, key",
    [
        ("train.epochs=abc", "train.epochs"),
        ("train.epochs=1.5", "train.epochs"),
        ("train.epochs=True", "train.epochs"),  # bool is no int here
        ("train.epochs=None", "train.epochs"),
        ("train.jit_compile=1", "train.jit_compile"),
        ("train.learning_rate=fast", "train.learning_rate"),
        ("train.learning_rate=True", "train.learning_rate"),
        ("model.name=3", "model.name"),
        ("model.hidden_dims=(32, 'a')", "model.hidden_dims"),
        ("model.hidden_dims=(32, 1.5)", "model.hidden_dims"),
        ("model.baseline_params=[1]", "model.baseline_params"),
        ("data.path=None", "data.path"),
        ("data.path=3", "data.path"),
        (
            "data.item_features.max_categories=many",
            "data.item_features.max_categories",
        ),
    ],
)
def test_wrong_type_names_the_key(assignment, key):
    with pytest.raises(ValueError, match=f"Config key `{key}` expects"):
        config.override(config.Config(), [assignment])


def test_wrong_type_message_says_expected_and_received():
    with pytest.raises(ValueError) as e:
        config.override(config.Config(), ["data.rating_col=3"])
    msg = str(e.value)
    assert "str or None" in msg and "Received: 3 (int)" in msg


def test_override_scalars():
    cfg = config.override(
        config.Config(),
        [
            "train.learning_rate=1",  # int accepted for float, as float
            "train.jit_compile=False",
            "model.name=ncf",  # bare word: kept as a string
            "model.dropout=0.25",
            "data.sep='\\t'",
            "data.duplicates='error'",
            "model.baseline_params={'k': 50, 'shrink': 1.0}",
        ],
    )
    assert cfg.train.learning_rate == 1.0
    assert type(cfg.train.learning_rate) is float
    assert cfg.train.jit_compile is False
    assert cfg.model.name == "ncf"
    assert cfg.model.dropout == 0.25
    assert cfg.data.sep == "\t"
    assert cfg.data.duplicates == "error"
    assert cfg.model.baseline_params == {"k": 50, "shrink": 1.0}


def test_override_nested_feature_keys():
    cfg = config.override(
        config.Config(),
        [
            "data.item_features.path=/tmp/items.parquet",
            "data.item_features.id_col=item_id",
            "data.user_features.path=users.csv",
        ],
    )
    assert cfg.data.item_features.path == pathlib.Path("/tmp/items.parquet")
    assert cfg.data.item_features.id_col == "item_id"
    assert cfg.data.user_features.path == pathlib.Path("users.csv")
    # Siblings keep their values.
    assert cfg.data.item_features.multivalued == ("genres",)
    assert cfg.data.user_col == "userId"


def test_override_tuples():
    cfg = config.Config()
    assert config.override(
        cfg, ["model.hidden_dims=(32,16)"]
    ).model.hidden_dims == (32, 16)
    assert config.override(
        cfg, ["model.hidden_dims=[8, 4, 2]"]
    ).model.hidden_dims == (8, 4, 2)
    one = config.override(cfg, ["model.hidden_dims=32"]).model.hidden_dims
    assert one == (32,) and type(one) is tuple
    assert (
        config.override(cfg, ["model.hidden_dims=()"]).model.hidden_dims == ()
    )
    assert config.override(cfg, ["eval.ks=5"]).eval.ks == (5,)
    names = config.override(
        cfg, ["data.item_features.categorical=genre"]
    ).data.item_features.categorical
    assert names == ("genre",)
    cols = config.override(
        cfg, ["data.column_names=('user', 'item')"]
    ).data.column_names
    assert cols == ("user", "item")


def test_override_optional_fields_to_none_and_back():
    cfg = config.override(
        config.Config(),
        [
            "data.rating_col=None",
            "data.split=random",
            "data.timestamp_col=None",
            "data.sep=None",
            "data.item_features.path=None",
        ],
    )
    assert cfg.data.rating_col is None
    assert cfg.data.timestamp_col is None
    assert cfg.data.sep is None
    assert cfg.data.item_features.path is None
    assert (
        config.override(
            cfg, ["data.implicit_threshold=3.5"]
        ).data.implicit_threshold
        == 3.5
    )
    assert (
        config.override(
            cfg, ["data.implicit_threshold=4"]
        ).data.implicit_threshold
        == 4.0
    )
    assert (
        config.override(cfg, ["data.rating_col=stars"]).data.rating_col
        == "stars"
    )


def test_override_paths_from_strings():
    cfg = config.override(
        config.Config(),
        ["data.path=some/dir/ratings.dat", "output.runs_dir=/tmp/out"],
    )
    assert cfg.data.path == pathlib.Path("some/dir/ratings.dat")
    assert isinstance(cfg.data.path, pathlib.Path)
    assert cfg.output.runs_dir == pathlib.Path("/tmp/out")
    cfg = config.override(cfg, ["output.run_name=exp1"])
    assert cfg.run_dir == pathlib.Path("/tmp/out/exp1")


# ---------------------------------------------------------------------------
# JSON round-trip and presets
# ---------------------------------------------------------------------------


def _changed():
    return config.override(
        config.Config(),
        [
            "seed=7",
            "model.hidden_dims=(32,16)",
            "model.baseline_params={'k': 5}",
            "data.rating_col=None",
            "data.implicit_threshold=3.5",
            "data.item_features.path=None",
            "data.user_features.path=/x/users.csv",
            "data.user_features.categorical=('city', 'job')",
            "output.runs_dir=/tmp/runs",
            "eval.ks=(5,)",
        ],
    )


@pytest.mark.parametrize("make", [config.default, config.tiny, _changed])
def test_to_dict_from_dict_round_trip(make):
    cfg = make()
    d = config.to_dict(cfg)
    text = json.dumps(d)  # JSON-ready: no Path or tuple objects left
    back = config.from_dict(json.loads(text))
    assert back == cfg
    assert isinstance(back.data.path, pathlib.Path)
    assert type(back.model.hidden_dims) is tuple


def test_to_dict_shape():
    d = config.to_dict(_changed())
    assert d["seed"] == 7
    assert d["model"]["hidden_dims"] == [32, 16]
    assert d["data"]["rating_col"] is None
    assert d["data"]["user_features"]["path"] == "/x/users.csv"
    assert d["output"]["runs_dir"] == "/tmp/runs"


def test_from_dict_partial_and_validated():
    cfg = config.from_dict({"train": {"epochs": 3}, "seed": 1})
    assert cfg.train.epochs == 3 and cfg.seed == 1
    assert cfg.train.batch_size == config.TrainConfig().batch_size
    assert cfg.data == config.DataConfig()
    with pytest.raises(ValueError, match="Config key `epochs` expects"):
        config.from_dict({"train": {"epochs": "many"}})
    section = config.from_dict({"epochs": 2}, config.TrainConfig)
    assert section == config.TrainConfig(epochs=2)


def test_tiny_preset_is_small_and_otherwise_default():
    tiny = config.tiny()
    assert isinstance(tiny, config.Config)
    assert tiny.model.embedding_dim <= 16
    assert tiny.model.id_embedding_dim <= 16
    assert all(d <= 16 for d in tiny.model.hidden_dims)
    assert tiny.model.history_length <= 16
    assert tiny.train.epochs <= 2
    assert tiny.train.verbose == 0
    assert tiny.eval.num_bootstrap < config.EvalConfig().num_bootstrap
    assert tiny.data == config.DataConfig()  # same data, smaller model
    assert config.PRESETS["tiny"]() == tiny
    assert config.PRESETS["default"]() == config.Config()


def test_tiny_keeps_the_given_data_settings():
    mine = config.override(
        config.Config(), ["data.path=/d/r.parquet", "data.rating_col=None"]
    )
    tiny = config.tiny(mine)
    assert tiny.data == mine.data
    assert tiny.model == config.tiny().model
    assert tiny.train == config.tiny().train


# ---------------------------------------------------------------------------
# field_paths and "every field is read"
# ---------------------------------------------------------------------------


def test_field_paths_lists_every_leaf():
    paths = config.field_paths()
    assert len(paths) == len(set(paths))
    assert "seed" in paths and "train.epochs" in paths
    assert "data.item_features.path" in paths
    assert "data.user_features.text_buckets" in paths
    for section in ("data", "train", "data.item_features"):
        assert section not in paths
    num_feature = len(dataclasses.fields(config.FeatureFileConfig))
    expected = (
        2  # seed, backend
        + len(dataclasses.fields(config.DataConfig))
        - 2
        + 2 * num_feature
        + sum(
            len(dataclasses.fields(cls))
            for name, cls in SECTIONS.items()
            if name != "data"
        )
    )
    assert len(paths) == expected
    for path in paths:  # every path resolves on a real config
        node = config.Config()
        for part in path.split("."):
            node = getattr(node, part)
        assert not dataclasses.is_dataclass(node), path


def _consumer_files():
    """The *.py files that may read the config: everything in the repo but
    tests/ and config.py itself."""
    files = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "tests" or rel == pathlib.Path("config.py"):
            continue
        if any(p.startswith(".") or p in ("venv", "runs") for p in rel.parts):
            continue
        files.append(path)
    return files


def _attribute_names(files):
    """Every `x.name` attribute access (and `getattr(x, "name")`) in the
    files, from the syntax tree, so comments and strings do not count."""
    names = set()
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                names.add(node.args[1].value)
    return names


def _config_members():
    """`{name: attributes it reads}` for the properties and methods of the
    config classes (e.g. `Config.run_dir` reads `output.runs_dir`)."""
    tree = ast.parse((ROOT / "config.py").read_text(encoding="utf-8"))
    members = {}
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef):
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef):
                    members[fn.name] = {
                        n.attr
                        for n in ast.walk(fn)
                        if isinstance(n, ast.Attribute)
                    }
    return members


def _read_names(files):
    """Attribute names the consumers read, directly or through a config
    property they read."""
    names = _attribute_names(files)
    members = _config_members()
    for name in sorted(names & members.keys()):
        names |= members[name]
    return names


def test_every_config_field_is_read_somewhere():
    files = _consumer_files()
    assert any(p.name == "data.py" for p in files)
    assert any(p.name == "train.py" for p in files)
    names = _read_names(files)
    unread = [
        path
        for path in config.field_paths()
        if path.rsplit(".", 1)[-1] not in names
    ]
    scanned = [str(p.relative_to(ROOT)) for p in files]
    assert not unread, (
        f"{len(unread)} config field(s) are never read (no `.<name>` "
        f"attribute access in any of {scanned}): {unread}. Wire each into "
        "the code that should use it, or remove it from config.py "
        "(STYLE.md section 4)."
    )


def test_attribute_scan_sees_reads_and_ignores_text(tmp_path):
    """The scanner behind the test above can fail: a comment or string
    naming a field is not a read."""
    code = tmp_path / "m.py"
    code.write_text(
        "# cfg.commented_out\n"
        "s = 'cfg.in_a_string'\n"
        "x = cfg.train.really_read\n"
        "y = getattr(cfg, 'read_by_getattr')\n",
        encoding="utf-8",
    )
    names = _attribute_names([code])
    assert {"really_read", "train", "read_by_getattr"} <= names
    assert "commented_out" not in names and "in_a_string" not in names


def test_config_property_counts_as_a_read(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("out = cfg.run_dir / 'x'\n", encoding="utf-8")
    assert "runs_dir" not in _attribute_names([code])
    assert {"runs_dir", "run_name"} <= _read_names([code])
    code.write_text("out = cfg.output\n", encoding="utf-8")
    assert "runs_dir" not in _read_names([code])
