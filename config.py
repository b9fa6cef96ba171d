"""Every setting of the toolkit, as one tree of frozen dataclasses.

Edit the defaults here to point the toolkit at your own data; override any
field from the command line with `--set section.field=value` (the value is
parsed with `ast.literal_eval`, falling back to the raw string). Unknown keys
and values of the wrong type raise `ValueError` naming the key. No logic that
depends on Keras lives here, so this module imports in milliseconds.
"""

import ast
import dataclasses
import json
import pathlib
import types
import typing
from dataclasses import dataclass
from dataclasses import field

Path = pathlib.Path
DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class FeatureFileConfig:
    """An optional table of user or item features, keyed by the raw id."""

    path: Path | None = None  # file; None = no features
    format: str = "auto"  # auto|csv|tsv|dat|parquet|jsonl
    sep: str | None = None  # None = by format (csv ",", tsv "\t", dat "::")
    header: bool = True  # first row names the columns
    column_names: tuple[str, ...] = ()  # names to use when header=False
    encoding: str = "utf-8"  # text encoding of csv/tsv/dat files
    id_col: str = "id"  # column holding the raw user/item id
    categorical: tuple[str, ...] = ()  # one value per row -> one-hot
    multivalued: tuple[str, ...] = ()  # "a|b|c" lists -> multi-hot
    multivalued_sep: str = "|"  # separator inside multivalued cells
    numeric: tuple[str, ...] = ()  # standardised (log1p if skewed)
    text: tuple[str, ...] = ()  # hashed bag of words
    max_categories: int = 1000  # most frequent values kept per column
    text_buckets: int = 512  # hash buckets for text columns, >= 1


@dataclass(frozen=True)
class DataConfig:
    """Where the interactions are and how to read, filter and split them."""

    path: Path = DATA_DIR / "ml-latest-small" / "ratings.csv"
    format: str = "auto"  # auto|csv|tsv|dat|parquet|jsonl
    sep: str | None = None  # None = by format
    header: bool = True  # first row names the columns
    column_names: tuple[str, ...] = ()  # names to use when header=False
    encoding: str = "utf-8"  # text encoding of csv/tsv/dat files
    user_col: str = "userId"
    item_col: str = "movieId"
    rating_col: str | None = "rating"  # None = implicit data, value 1
    timestamp_col: str | None = "timestamp"  # None = file order is time
    implicit_threshold: float | None = None  # keep rating >= this; None=all
    duplicates: str = "last"  # last|first|max|sum|error (same user+item)
    min_user_interactions: int = 0  # k-core on users, iterated to stable
    min_item_interactions: int = 0  # k-core on items, iterated to stable
    split: str = "chrono"  # chrono|leave_last_out|time_cut|random
    valid_fraction: float = 0.1  # per user (chrono/random) or of time
    test_fraction: float = 0.2  # per user (chrono/random) or of time
    item_features: FeatureFileConfig = field(
        default_factory=lambda: FeatureFileConfig(
            path=DATA_DIR / "ml-latest-small" / "movies.csv",
            id_col="movieId",
            multivalued=("genres",),
            text=("title",),
        )
    )
    user_features: FeatureFileConfig = field(
        default_factory=FeatureFileConfig
    )


@dataclass(frozen=True)
class ModelConfig:
    """Which recommender to build and its hyper-parameters.

    `name` is a Keras model family (`two_tower`) or a baseline from
    `eval/baselines.py` (`most_popular`, `itemknn`, `ease`, `als`, ...).
    """

    name: str = "two_tower"
    embedding_dim: int = 64  # output embedding width
    id_embedding_dim: int = 64  # width of the id embedding tables
    hidden_dims: tuple[int, ...] = (256,)  # tower MLP widths
    dropout: float = 0.1  # in [0, 1)
    l2: float = 0.0  # L2 penalty on embedding tables
    loss: str = "auto"  # auto (two_tower: softmax, ncf: bce)|softmax|bpr|mse|bce
    temperature: float = 0.05  # softmax temperature, > 0
    use_logq: bool = True  # logQ popularity correction in softmax
    use_user_id: bool = False  # user tower has a user id embedding
    use_history: bool = True  # user tower pools the user's past items
    history_length: int = 50  # most recent items pooled, >= 1
    use_item_features: bool = True  # item tower reads item features
    item_input: str = "id"  # ncf item side: id|features|both
    gmf_dim: int = 32  # ncf GMF branch width
    mlp_dims: tuple[int, ...] = (64, 32, 16)  # ncf MLP tower widths
    pretrain: bool = False  # ncf: start NeuMF from trained GMF and MLP
    like_threshold: float | None = None  # ncf: rating >= this is label 1
    dislike_threshold: float | None = None  # ncf: rating <= this is label 0
    use_user_features: bool = True  # user tower reads user features
    baseline_params: dict = field(default_factory=dict)  # baselines' kwargs


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40  # upper bound; early stopping picks the best
    batch_size: int = 1024  # examples per step
    learning_rate: float = 2e-3
    optimizer: str = "adam"  # adam|adamw|sgd
    weight_decay: float = 0.0  # adamw only
    num_negatives: int = 4  # sampled negatives per positive (bpr)
    negative_sampling: str = "uniform"  # uniform|popularity
    popularity_alpha: float = 0.75  # popularity^alpha sampler exponent
    history_dropout: float = 0.2  # share of history items hidden per step
    monitor: str = "recall@20"  # validation ranking metric to maximise
    early_stopping_patience: int = 5  # epochs without improvement
    reduce_lr_patience: int = 2  # epochs before the LR is cut
    reduce_lr_factor: float = 0.5  # LR multiplier on plateau
    min_learning_rate: float = 1e-5
    jit_compile: bool = True  # XLA/torch.compile where the backend allows
    verbose: int = 1  # Keras fit verbosity: 0, 1 (bar) or 2


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (10, 20)  # cut-offs for the metrics
    memory_budget_mb: int = 256  # score block size for ranking
    num_bootstrap: int = 1000  # resamples for confidence intervals
    baselines: tuple[str, ...] = ("most_popular",)  # shown beside the model
    protocol: str = "p1"  # benchmark protocol: p1|p2
    cold_item_fraction: float = 0.2  # items held out by evaluate_cold_items
    benchmark_models: tuple[str, ...] = (
        "random",
        "most_popular",
        "itemknn",
        "ease",
        "als",
        "bpr",
        "two_tower",
    )


@dataclass(frozen=True)
class OutputConfig:
    runs_dir: Path = Path("runs")  # relative to the working directory
    run_name: str = "default"  # outputs go to runs_dir / run_name
    top_k: int = 10  # recommendations per user in predictions


@dataclass(frozen=True)
class Config:
    seed: int = 42
    backend: str = "jax"  # used only when KERAS_BACKEND is unset
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def run_dir(self) -> Path:
        return self.output.runs_dir / self.output.run_name


def default() -> Config:
    """The configuration that runs on the shipped MovieLens data."""
    return Config()


TINY_OVERRIDES = (
    "model.embedding_dim=8",
    "model.id_embedding_dim=8",
    "model.hidden_dims=(16,)",
    "model.history_length=8",
    "train.epochs=2",
    "train.batch_size=1024",
    "train.early_stopping_patience=1",
    "train.verbose=0",
    "eval.num_bootstrap=50",
)


def tiny(cfg: "Config | None" = None) -> Config:
    """A seconds-long configuration for tests and smoke runs: `cfg` (default
    settings if None) with a tiny model and two epochs."""
    return override(cfg or Config(), list(TINY_OVERRIDES))


PRESETS = {"default": default, "tiny": tiny}


def override(cfg: Config, assignments: list[str]) -> Config:
    """Return `cfg` with each `"section.field=value"` applied.

    Raises:
        ValueError: naming the key when it is unknown, or when the value
            does not fit the field's type.
    """
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueError(
                "Overrides look like `section.field=value`. "
                f"Received: {assignment!r}"
            )
        cfg = _set(cfg, key.split("."), key, raw.strip())
    return cfg


def to_dict(cfg) -> dict:
    """JSON-ready dict of a config (paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def from_dict(data: dict, cls=Config):
    """Inverse of `to_dict`, validating every field like `override`."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = from_dict(value, hints[f.name])
        else:
            kwargs[f.name] = _coerce(value, hints[f.name], f.name)
    return cls(**kwargs)


def field_paths(cls=Config, prefix: str = "") -> list[str]:
    """Every leaf field as a dotted path, e.g. `train.epochs`."""
    hints = typing.get_type_hints(cls)
    paths = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            paths += field_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            paths.append(prefix + f.name)
    return paths


def _set(node, parts: list[str], full_key: str, raw: str):
    names = [f.name for f in dataclasses.fields(node)]
    if parts[0] not in names:
        raise ValueError(
            f"Unknown config key `{full_key}`: `{parts[0]}` is not one of "
            f"{names}."
        )
    hint = typing.get_type_hints(type(node))[parts[0]]
    current = getattr(node, parts[0])
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(
                f"Unknown config key `{full_key}`: `{parts[0]}` has no "
                "sub-fields."
            )
        value = _set(current, parts[1:], full_key, raw)
    elif dataclasses.is_dataclass(current):
        raise ValueError(
            f"Config key `{full_key}` is a section; set one of its fields, "
            f"e.g. `{full_key}.{dataclasses.fields(current)[0].name}=...`."
        )
    else:
        value = _coerce(_parse(raw), hint, full_key)
    return dataclasses.replace(node, **{parts[0]: value})


def _parse(raw: str):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare word such as `ncf` or a path


def _coerce(value, hint, key: str):
    """Check `value` against the type hint, converting where lossless."""
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    errors = []
    for option in options:
        try:
            return _coerce_one(value, option)
        except (TypeError, ValueError) as e:
            errors.append(str(e))
    expected = " or ".join(_type_name(o) for o in options)
    raise ValueError(
        f"Config key `{key}` expects {expected}. Received: {value!r} "
        f"({type(value).__name__})."
    )


def _coerce_one(value, hint):
    origin = typing.get_origin(hint)
    if hint is type(None):
        if value is None or value == "None":
            return None
        raise TypeError("not None")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("not a bool")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("not an int")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError("not a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError("not a string")
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise TypeError("not a path")
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise TypeError("not a dict")
    if origin is tuple:
        if isinstance(value, (str, int, float)):
            value = (value,)
        if not isinstance(value, (tuple, list)):
            raise TypeError("not a tuple")
        inner = typing.get_args(hint)[0]
        return tuple(_coerce_one(v, inner) for v in value)
    raise TypeError(f"unsupported type {hint}")


def _type_name(hint) -> str:
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) is tuple:
        return f"a tuple of {_type_name(typing.get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))
