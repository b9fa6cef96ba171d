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
import os
import pathlib
import types
import typing
from dataclasses import dataclass
from dataclasses import field

Path = pathlib.Path
REPO_DIR = Path(__file__).resolve().parent
DATA_DIR = REPO_DIR / "data"
SHARED_ENV = "RECSYS_SHARED"
SHARED_TOKEN = "{shared}"


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
    min_coverage: float = 0.5  # share of users/items the file must cover


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
    timestamp_col: str | None = "timestamp"  # None = no time (see below)
    order_by_file: bool = False  # no timestamp_col: rows are in time order
    weight_col: str | None = None  # counts (plays, clicks); None = weight 1
    weight_transform: str = "log1p"  # log1p|linear|binary: count -> weight
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
    user_features: FeatureFileConfig = field(default_factory=FeatureFileConfig)


@dataclass(frozen=True)
class ModelConfig:
    """Which recommender to build and its hyper-parameters.

    `name` is a Keras model family (`sasrec`, the default: the best test
    N@20 on P1 within a 5-minute fit; `two_tower`, `ncf`, `vae`, ...) or a
    baseline from `eval/baselines.py` (`most_popular`, `ease`, `als`, ...).
    """

    name: str = "sasrec"
    embedding_dim: int = 64  # output embedding width
    id_embedding_dim: int = 64  # width of the id embedding tables
    hidden_dims: tuple[int, ...] = (256,)  # tower MLP widths
    dropout: float = 0.1  # in [0, 1)
    l2: float = 0.0  # L2 penalty on embedding tables
    # auto (the family's: two_tower softmax, ncf bce)|softmax|full_softmax|
    # bpr|mse|bce
    loss: str = "auto"
    mask_known: bool = False  # full_softmax: history items are no negatives
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
    attention_blocks: int = 2  # sasrec: causal self-attention blocks
    attention_heads: int = 2  # sasrec: heads per block, divide embedding_dim
    time_buckets: int = 0  # sasrec: item-age buckets (log2 days), 0 = off
    attention_dropout: float = 0.2  # sasrec: its dropout (not model.dropout)
    latent_dim: int = 200  # vae: width of the latent code
    kl_weight: float = 0.2  # vae: KL weight (beta, or gamma per interaction)
    kl_scaling: str = "constant"  # vae: constant|per_interaction
    kl_anneal_steps: int = 0  # vae: steps for a constant beta to ramp up
    diffusion_steps: int = 5  # diffusion_cf: diffusion steps T, >= 2
    noise_scale: float = 0.1  # diffusion_cf: scales the noise variances
    noise_min: float = 1e-3  # diffusion_cf: first step's variance / scale
    noise_max: float = 1e-2  # diffusion_cf: last step's variance / scale
    start_step: int = 0  # diffusion_cf: scoring starts from this step
    baseline_params: dict = field(default_factory=dict)  # baselines' kwargs


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40  # upper bound; early stopping picks the best
    batch_size: int = 1024  # examples per step
    positions_per_step: int = 6400  # sasrec: its batch, predicted positions
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
    memory_warning_gb: float = 4.0  # warn before a fit estimated above this
    num_bootstrap: int = 1000  # resamples for confidence intervals
    baselines: tuple[str, ...] = ("most_popular",)  # shown beside the model
    protocol: str = "p1"  # benchmark protocol: p1|p2|p3 (P3: Amazon chrono)
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
    run_name: str = "auto"  # runs_dir / run_name; auto = model.name
    top_k: int = 10  # recommendations per user in predictions


@dataclass(frozen=True)
class ScaleConfig:
    """Speed and scale: devices, precision, input workers, top-K retrieval.

    `distribution` uses `keras.distribution` and needs the JAX backend (see
    `distribution.py`; TensorFlow users wrap the model in a
    `tf.distribute` strategy instead).
    """

    distribution: str = "none"  # none|data_parallel|model_parallel (JAX)
    model_parallel: int = 2  # devices on the mesh's `model` axis, >= 1
    mixed_precision: str = "float32"  # float32|mixed_bfloat16|mixed_float16
    workers: int = 1  # threads/processes building batches ahead; 1 = inline
    use_multiprocessing: bool = False  # workers are processes, not threads
    index: str = "exact"  # top-K: exact (keras.ops.top_k)|flat|ivf|hnsw (FAISS)
    index_nlist: int = 0  # ivf: inverted lists; 0 = 4 * sqrt(num_items)
    index_nprobe: int = 16  # ivf: lists visited per query, >= 1
    hnsw_m: int = 32  # hnsw: graph neighbours per node, >= 2
    hnsw_ef_search: int = 128  # hnsw: candidate list size per query, >= 1
    recall_users: int = 1000  # users whose approximate top-K is checked


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP service (`python main.py serve`) over the production model."""

    host: str = "127.0.0.1"  # bind address; 0.0.0.0 exposes it
    port: int = 8000  # TCP port
    max_k: int = 100  # largest k a request may ask for, >= 1
    max_batch: int = 256  # users per batch request / items per fold-in
    use_faiss: bool = False  # retrieve from a FAISS index (vector models)
    faiss_index: str = "flat"  # flat (exact)|ivf|hnsw; knobs in scale.*
    reranker: Path | None = None  # another run's model folder; None = off
    candidates: int = 200  # retrieved items the reranker re-scores, >= 1
    api_key: str | None = None  # required X-API-Key; None = $RECSYS_API_KEY
    rate_limit: float = 0.0  # requests per second per client; 0 = off
    rate_burst: int = 20  # requests a client may send at once, >= 1
    max_body_bytes: int = 1_000_000  # largest request body, >= 1024


@dataclass(frozen=True)
class TrackConfig:
    """Experiment tracking with MLflow (off by default)."""

    mlflow: bool = False  # log train_* actions to MLflow
    tracking_uri: str = "file:./mlruns"  # local file store; or a server URL
    experiment: str = "recsys-keras"  # MLflow experiment name


@dataclass(frozen=True)
class PersonaConfig:
    """Item personas and the persona reranker (`model.name=persona`)."""

    num_personas: int = 5  # personas per item (K), >= 1
    generator: str = "data"  # data (clustered audiences)|llm
    min_persona_users: int = 3  # audience users per persona, >= 1
    kmeans_iterations: int = 20  # spherical k-means rounds, >= 1
    svd_dim: int = 64  # user term profiles reduced to this for clustering
    num_terms: int = 6  # distinctive terms describing a persona, >= 1
    num_examples: int = 3  # co-liked example items per persona, >= 0
    interaction_text: tuple[str, ...] = ()  # review text columns of data.path
    tags_path: Path | None = DATA_DIR / "ml-latest-small" / "tags.csv"  # None
    tags_item_col: str = "movieId"  # item id column of tags_path
    tags_col: str = "tag"  # tag text column of tags_path
    personas_path: Path | None = None  # JSONL to use instead of generating
    # LLM prompt templates:
    prompt_dir: Path = REPO_DIR / "content" / "personas" / "prompts"
    llm_endpoint: str = "http://127.0.0.1:8080/v1"  # OpenAI-compatible base
    llm_model: str = "gpt-4o-mini"  # model name sent with each request
    llm_api_key_env: str = "OPENAI_API_KEY"  # env var holding the API key
    llm_timeout: float = 60.0  # seconds per HTTP request, > 0
    llm_retries: int = 4  # retries on 429/5xx/network errors, >= 0
    llm_requests_per_minute: float = 60.0  # client-side rate limit, > 0
    llm_max_items: int = 0  # most popular items sent to the LLM; 0 = all
    first_stage: str = "ease"  # candidate generator: any other model.name
    candidates: int = 100  # M first-stage candidates reranked per user
    blend_weight: float = 0.5  # persona share of the blended score, [0, 1]
    aggregation: str = "softmax"  # max|softmax over an item's personas
    temperature: float = 0.1  # InfoNCE and softmax-aggregation temperature
    label_smoothing: float = 0.1  # InfoNCE label smoothing, [0, 1)
    profile_length: int = 20  # N most recent interactions in a profile
    recency_gamma: float = 0.9  # profile weight gamma^age, age 0 = newest
    encoder: str = "trainable"  # trainable (hashed words)|minilm (+adapter)
    minilm_length: int = 64  # MiniLM word pieces kept per text, >= 8
    embedding_dim: int = 64  # width of profile and persona embeddings
    hidden_dims: tuple[int, ...] = (128,)  # encoder tower MLP widths
    dropout: float = 0.1  # in the encoder towers, [0, 1)
    text_length: int = 32  # words kept per text (trainable encoder)
    vocab_buckets: int = 16384  # word hash buckets (trainable encoder)
    target_fraction: float = 0.2  # latest fit interactions used as targets
    epochs: int = 10  # encoder epochs; early stopping on valid loss
    batch_size: int = 256  # in-batch negatives per step, >= 2
    learning_rate: float = 1e-3  # Adam


@dataclass(frozen=True)
class MultimodalConfig:
    """Item content and the multimodal model (`model.name=multimodal`).

    A path or pattern may start with `{shared}`, the shared datasets folder
    (`$RECSYS_SHARED`, else `../shared` beside the repository). Text and
    numeric columns are looked up in `content_path`, then in
    `data.item_features`; per item the first non-empty value wins.
    """

    base: str = "two_tower"  # two_tower|ncf: the model it plugs into
    modalities: tuple[str, ...] = ("text", "image", "numeric")  # used ones
    content_path: Path | None = Path(
        "{shared}/datasets/ml-1m/movies_extrainfos.dat"
    )  # extra item table joined by raw id; None = off
    content_sep: str | None = None  # None = by suffix (.dat "::", .csv ",")
    content_column_names: tuple[str, ...] = (
        "movieId",
        "title",
        "year",
        "rated",
        "released",
        "genre",
        "director",
        "writer",
        "actors",
        "plot",
        "poster",
    )  # names for a header-less file; () = first row is the header
    content_encoding: str = "utf-8"  # text encoding of content_path
    content_id_col: str = "movieId"  # raw item id column of content_path
    text_columns: tuple[str, ...] = (
        "title",
        "genres",
        "director",
        "actors",
        "plot",
    )  # joined into one text per item
    numeric_columns: tuple[str, ...] = (
        "year",
    )  # standardised, log1p if skewed
    image_pattern: str = "{shared}/datasets/ml-1m-posters/{id}.jpg"  # ""=off
    image_encoder: str = "cnn"  # cnn (trainable)|backbone (frozen, cached)
    image_size: int = 32  # pixels per side given to the CNN / backbone
    cnn_filters: tuple[int, ...] = (16, 32, 64)  # CNN channels per stage
    image_backbone: str = "MobileNetV3Small"  # keras.applications|keras_hub:<x>
    image_backbone_weights: str | None = "imagenet"  # None = random init
    text_encoder: str = "minilm"  # minilm (offline MiniLM-L6)|hashed
    text_sequence_length: int = 128  # MiniLM tokens kept per text
    hashed_text_dim: int = 384  # width of the hashed text encoder
    encode_batch_size: int = 64  # items per frozen-encoder forward pass
    embedding_dim: int = 64  # modality token and fused item vector width
    fusion: str = "attention"  # attention|gated|concat
    num_heads: int = 4  # attention heads; must divide embedding_dim
    projection_dims: tuple[int, ...] = ()  # hidden widths of the projections
    use_item_id: bool = False  # add an id embedding (useless for cold items)
    alignment_weight: float = 0.0  # image-text InfoNCE weight; 0 = off
    alignment_temperature: float = 0.1  # InfoNCE temperature, > 0
    cache_dir: Path = Path("cache")  # feature cache, relative to the cwd


@dataclass(frozen=True)
class DecodeConfig:
    """Item embeddings -> images (`diffusion/decode.py`): the offline poster
    autoencoder and the KerasCV Stable Diffusion pipeline with its adapter.
    """

    decoder: str = "poster_decoder"  # poster_decoder|stable_diffusion
    posters_dir: Path = Path("{shared}/datasets/ml-1m-posters")  # {id}.jpg
    cache_dir: Path = Path("cache")  # resized poster stacks, relative to cwd
    image_height: int = 96  # poster model pixels; multiple of 2**len(filters)
    image_width: int = 64  # poster model pixels (posters are about 2:3)
    embedding_dim: int = 128  # poster embedding width, >= 2
    filters: tuple[int, ...] = (16, 32, 64, 128)  # conv channels per stage
    latent_noise: float = 0.2  # norm of training noise on unit embeddings
    ssim_weight: float = 0.2  # loss = MSE + weight * (1 - SSIM), >= 0
    epochs: int = 15  # poster model epochs; early stopping on valid loss
    batch_size: int = 64  # posters per step (and per decode batch)
    learning_rate: float = 1e-3  # poster model Adam learning rate
    valid_fraction: float = 0.05  # posters held out for early stopping
    test_fraction: float = 0.1  # posters held out for the reported metrics
    image_guidance_scales: tuple[float, ...] = (1.0, 3.0, 7.5)  # sweep; 1=off
    steps: int = 25  # Stable Diffusion DDIM steps per image, >= 1
    sd_weights: str = "pretrained"  # pretrained (downloaded)|random (offline)
    sd_height: int = 576  # Stable Diffusion pixels, multiple of 64
    sd_width: int = 384  # Stable Diffusion pixels, multiple of 64
    prompt: str = ""  # text encoded beside the embedding; needs CLIP vocab
    num_context_tokens: int = 4  # adapter tokens replacing the prompt's tail
    adapter_hidden_dim: int = 1024  # adapter MLP width
    adapter_epochs: int = 5  # adapter training epochs (frozen SD)
    adapter_batch_size: int = 4  # posters per adapter step
    adapter_learning_rate: float = 1e-4  # adapter Adam learning rate
    cond_drop_prob: float = 0.1  # adapter steps with the empty prompt (CFG)
    max_posters: int = 0  # adapter training posters, 0 = all


@dataclass(frozen=True)
class DiffusionConfig:
    """The user-conditioned diffusion prior over item embeddings
    (`train_prior`, `generate`, `evaluate_prior`; docs/diffusion.md)."""

    item_embeddings: str = "als"  # als|two_tower|ncf|text|posters|a .npy path
    item_ids_path: Path | None = None  # raw item id per .npy row; None = index
    like_threshold: float = 4.0  # rating >= this: score token "like"
    dislike_threshold: float = 2.0  # rating <= this: "dislike"; between: null
    timesteps: int = 1000  # diffusion steps T, >= 2
    schedule: str = "cosine"  # linear|cosine (squaredcos_cap_v2)
    parameterization: str = "v"  # epsilon|x0|v: what the network predicts
    num_tokens: int = 4  # tokens the embedding is cut into, in [1, dim]
    width: int = 128  # transformer width, divisible by num_heads
    depth: int = 4  # transformer blocks, >= 1
    num_heads: int = 4  # attention heads
    conditioning: str = "adaln"  # adaln (AdaLN-Zero)|cross|both
    p_drop_user: float = 0.1  # P(user -> null user) per example, [0, 1]
    p_drop_score: float = 0.1  # P(score -> null score) per example, [0, 1]
    snr_weighting: str = "none"  # none|min_snr (Hang et al. 2023)
    snr_gamma: float = 5.0  # Min-SNR cap, > 0
    epochs: int = 100  # upper bound; early stopping on the valid loss
    batch_size: int = 256  # examples per step
    learning_rate: float = 1e-3  # Adam
    sampler: str = "ddim"  # ddim|ddpm (respaced to sampling_steps)
    sampling_steps: int = 50  # reverse steps, in [1, timesteps]
    eta: float = 0.0  # DDIM noise: 0 deterministic, 1 DDPM variance
    guidance_scale: float = 3.0  # s in eps_u + s (eps_c - eps_u), >= 0
    sweep_scales: tuple[float, ...] = (0.0, 1.0, 3.0, 5.0, 7.0, 10.0)  # eval
    eval_users: int = 200  # users sampled by evaluate_prior; 0 = all
    samples_per_user: int = 8  # embeddings per user in evaluate_prior
    random_users: int = 10  # other users scoring each sample (NCF check)


@dataclass(frozen=True)
class TuneConfig:
    """Hyper-parameter search on the validation split (`python main.py
    tune`; eval/tune.py). Every model gets the same number of trials."""

    models: tuple[str, ...] = ()  # families to tune; () = model.name
    space: dict = field(default_factory=dict)  # model -> {key: spec}
    trials: int = 20  # trials per model, >= 1
    timeout_s: float = 0.0  # per model; 0 = no limit
    sampler: str = "tpe"  # tpe|random
    protocol: str = "config"  # config (the data.* split)|p1|p2|p3


@dataclass(frozen=True)
class Config:
    seed: int = 42
    backend: str = "jax"  # used only when KERAS_BACKEND is unset
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    persona: PersonaConfig = field(default_factory=PersonaConfig)
    multimodal: MultimodalConfig = field(default_factory=MultimodalConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self):
        _check_fields(self, "")

    @property
    def run_dir(self) -> Path:
        """`runs_dir / run_name`; with `run_name="auto"` the folder is named
        after `model.name`, so runs of different models never share one."""
        name = self.output.run_name
        return self.output.runs_dir / (
            self.model.name if name == "auto" else name
        )


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
    "train.positions_per_step=256",
    "train.early_stopping_patience=1",
    "train.verbose=0",
    "eval.num_bootstrap=50",
)


def tiny(cfg: "Config | None" = None) -> Config:
    """A seconds-long configuration for tests and smoke runs: `cfg` (default
    settings if None) with a tiny model and two epochs."""
    return override(cfg or Config(), list(TINY_OVERRIDES))


def shared_root() -> Path:
    """The shared folder: `$RECSYS_SHARED`, else `shared` beside the
    repository. Data that may not be shipped is read from its `datasets`."""
    root = os.environ.get(SHARED_ENV)
    return Path(root) if root else REPO_DIR.parent / "shared"


def shared_datasets() -> Path:
    """`shared_root() / "datasets"`."""
    return shared_root() / "datasets"


def resolve_shared(value):
    """`value` (str or Path) with a leading `{shared}` replaced by
    `shared_root()`; returned as the same type."""
    text = str(value)
    if SHARED_TOKEN not in text:
        return value
    resolved = text.replace(SHARED_TOKEN, str(shared_root()))
    if isinstance(value, pathlib.PurePath):
        return Path(resolved)
    return resolved


def amazon(cfg: "Config | None" = None) -> Config:
    """Amazon Musical Instruments 5-core reviews (He & McAuley 2016) from
    the shared datasets folder, with review text for personas."""
    path = shared_datasets() / "amazon-musical-instruments"
    return override(
        cfg or Config(),
        [
            f"data.path={str(path / 'Musical_Instruments.json')!r}",
            "data.user_col=reviewerID",
            "data.item_col=asin",
            "data.rating_col=overall",
            "data.timestamp_col=unixReviewTime",
            "data.item_features.path=None",
            "persona.interaction_text=('summary', 'reviewText')",
            "persona.tags_path=None",
        ],
    )


PRESETS = {"default": default, "tiny": tiny, "amazon": amazon}


def load_preset(name) -> Config:
    """The preset called `name` (a key of `PRESETS`), or the config a
    preset file describes: JSON with `"overrides"` (a list of `--set`
    strings, as `tune` writes) and optionally `"preset"` (the base)."""
    if name in PRESETS:
        return PRESETS[name]()
    path = Path(name)
    if path.suffix != ".json" or not path.is_file():
        raise ValueError(
            f"`--preset` must be one of {sorted(PRESETS)} or a preset .json "
            f"file. Received: {name!r}"
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        base = spec.get("preset", "default")
        sets = list(spec["overrides"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{path}: a preset file is a JSON object with `overrides` (a "
            f"list of key=value strings). ({e})"
        ) from None
    if base not in PRESETS:
        raise ValueError(f"{path}: unknown base preset {base!r}.")
    return override(PRESETS[base](), sets)


def backend_from_argv(argv) -> str:
    """The `backend` field the command line `argv` asks for (its `--preset`
    and `--set backend=...`), read before Keras is imported; the default
    config's when the line does not parse (argparse reports it later)."""
    preset, overrides = "default", []
    for i, arg in enumerate(argv):
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
        elif arg == "--preset":
            preset = value
        elif arg.startswith("--set="):
            overrides.append(arg.split("=", 1)[1])
        elif arg == "--set":
            overrides.append(value)
    wanted = [o for o in overrides if o.strip().startswith("backend=")]
    try:
        return override(load_preset(preset), wanted).backend
    except ValueError:
        return Config().backend


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
    check(cfg)
    return cfg


def to_dict(cfg) -> dict:
    """JSON-ready dict of a config (paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def from_dict(data: dict, cls=Config):
    """Inverse of `to_dict`, validating every field like `override`.
    Keys this version does not know (from an older or newer run) are
    ignored."""
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


# ---------------------------------------------------------------------------
# Allowed values, checked whenever a Config is built (before any data is
# read). `model.name` and the other fields that name a recommender family
# are checked against the registry by `recommenders.check_names`.
# ---------------------------------------------------------------------------

FORMATS = ("csv", "tsv", "dat", "parquet", "jsonl")
DUPLICATE_RULES = ("last", "first", "max", "sum", "error")
SPLITS = ("chrono", "leave_last_out", "time_cut", "random")
LOSSES = ("auto", "softmax", "full_softmax", "bpr", "mse", "bce")
DISTRIBUTIONS = ("none", "data_parallel", "model_parallel")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
INDEXES = ("exact", "flat", "ivf", "hnsw")
MODALITIES = ("text", "image", "numeric")
WEIGHT_TRANSFORMS = ("log1p", "linear", "binary")
ORDERED_SPLITS = ("chrono", "leave_last_out", "time_cut")


@dataclass(frozen=True)
class _Rule:
    """One field's constraint: `choices`, or a numeric range (`low` /
    `high`, open ends with `*_open`), applied to each element of a tuple."""

    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value) -> str | None:
        if value is None:
            return None
        if self.choices:
            return (
                None
                if value in self.choices
                else (f"must be one of {self.choices}")
            )
        if self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        ):
            return f"must be {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        ):
            return f"must be {'<' if self.high_open else '<='} {self.high}"
        return None


def _one_of(*choices):
    return _Rule(choices=choices)


def _at_least(low):
    return _Rule(low=low)


_POSITIVE = _Rule(low=0, low_open=True)
_NON_NEGATIVE = _Rule(low=0)
_FRACTION = _Rule(low=0, high=1, high_open=True)  # [0, 1)
_PROBABILITY = _Rule(low=0, high=1)  # [0, 1]
_OPEN_UNIT = _Rule(low=0, high=1, low_open=True, high_open=True)  # (0, 1)

_FEATURE_FILE_RULES = {
    "format": _one_of("auto", *FORMATS),
    "max_categories": _at_least(1),
    "text_buckets": _at_least(1),
    "min_coverage": _PROBABILITY,
}
RULES = {
    "backend": _one_of("jax", "tensorflow", "torch"),
    "data.format": _one_of("auto", *FORMATS),
    "data.duplicates": _one_of(*DUPLICATE_RULES),
    "data.min_user_interactions": _NON_NEGATIVE,
    "data.min_item_interactions": _NON_NEGATIVE,
    "data.split": _one_of(*SPLITS),
    "data.valid_fraction": _FRACTION,
    "data.test_fraction": _OPEN_UNIT,
    "data.weight_transform": _one_of(*WEIGHT_TRANSFORMS),
    **{f"data.item_features.{k}": v for k, v in _FEATURE_FILE_RULES.items()},
    **{f"data.user_features.{k}": v for k, v in _FEATURE_FILE_RULES.items()},
    "model.embedding_dim": _at_least(1),
    "model.id_embedding_dim": _at_least(1),
    "model.hidden_dims": _at_least(1),
    "model.dropout": _FRACTION,
    "model.attention_dropout": _FRACTION,
    "model.l2": _NON_NEGATIVE,
    "model.loss": _one_of(*LOSSES),
    "model.temperature": _POSITIVE,
    "model.history_length": _at_least(1),
    "model.item_input": _one_of("id", "features", "both"),
    "model.gmf_dim": _at_least(1),
    "model.mlp_dims": _at_least(1),
    "model.attention_blocks": _at_least(1),
    "model.attention_heads": _at_least(1),
    "model.time_buckets": _NON_NEGATIVE,
    "model.latent_dim": _at_least(1),
    "model.kl_weight": _NON_NEGATIVE,
    "model.kl_scaling": _one_of("constant", "per_interaction"),
    "model.kl_anneal_steps": _NON_NEGATIVE,
    "model.diffusion_steps": _at_least(2),
    "model.noise_scale": _POSITIVE,
    "model.noise_min": _OPEN_UNIT,
    "model.noise_max": _OPEN_UNIT,
    "model.start_step": _NON_NEGATIVE,
    "train.epochs": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.positions_per_step": _at_least(1),
    "train.learning_rate": _POSITIVE,
    "train.optimizer": _one_of("adam", "adamw", "sgd"),
    "train.weight_decay": _NON_NEGATIVE,
    "train.num_negatives": _NON_NEGATIVE,
    "train.negative_sampling": _one_of("uniform", "popularity"),
    "train.popularity_alpha": _NON_NEGATIVE,
    "train.history_dropout": _FRACTION,
    "train.early_stopping_patience": _at_least(1),
    "train.reduce_lr_patience": _at_least(1),
    "train.reduce_lr_factor": _Rule(low=0, high=1, low_open=True),
    "train.min_learning_rate": _NON_NEGATIVE,
    "train.verbose": _one_of(0, 1, 2),
    "eval.ks": _at_least(1),
    "eval.memory_budget_mb": _at_least(1),
    "eval.memory_warning_gb": _POSITIVE,
    "eval.num_bootstrap": _at_least(1),
    "eval.protocol": _one_of("p1", "p2", "p3"),
    "eval.cold_item_fraction": _OPEN_UNIT,
    "tune.trials": _at_least(1),
    "tune.timeout_s": _NON_NEGATIVE,
    "tune.sampler": _one_of("tpe", "random"),
    "tune.protocol": _one_of("config", "p1", "p2", "p3"),
    "output.top_k": _at_least(1),
    "scale.distribution": _one_of(*DISTRIBUTIONS),
    "scale.model_parallel": _at_least(1),
    "scale.mixed_precision": _one_of(*PRECISIONS),
    "scale.workers": _at_least(1),
    "scale.index": _one_of(*INDEXES),
    "scale.index_nlist": _NON_NEGATIVE,
    "scale.index_nprobe": _at_least(1),
    "scale.hnsw_m": _at_least(2),
    "scale.hnsw_ef_search": _at_least(1),
    "scale.recall_users": _NON_NEGATIVE,
    "serve.port": _Rule(low=0, high=65535),
    "serve.max_k": _at_least(1),
    "serve.max_batch": _at_least(1),
    "serve.faiss_index": _one_of("flat", "ivf", "hnsw"),
    "serve.candidates": _at_least(1),
    "serve.rate_limit": _NON_NEGATIVE,
    "serve.rate_burst": _at_least(1),
    "serve.max_body_bytes": _at_least(1024),
    "persona.num_personas": _at_least(1),
    "persona.generator": _one_of("data", "llm"),
    "persona.min_persona_users": _at_least(1),
    "persona.kmeans_iterations": _at_least(1),
    "persona.svd_dim": _at_least(2),
    "persona.num_terms": _at_least(1),
    "persona.num_examples": _NON_NEGATIVE,
    "persona.llm_timeout": _POSITIVE,
    "persona.llm_retries": _NON_NEGATIVE,
    "persona.llm_requests_per_minute": _POSITIVE,
    "persona.llm_max_items": _NON_NEGATIVE,
    "persona.candidates": _at_least(1),
    "persona.blend_weight": _PROBABILITY,
    "persona.aggregation": _one_of("max", "softmax"),
    "persona.temperature": _POSITIVE,
    "persona.label_smoothing": _FRACTION,
    "persona.profile_length": _at_least(1),
    "persona.recency_gamma": _Rule(low=0, high=1, low_open=True),
    "persona.encoder": _one_of("trainable", "minilm"),
    "persona.minilm_length": _at_least(8),
    "persona.embedding_dim": _at_least(1),
    "persona.hidden_dims": _at_least(1),
    "persona.dropout": _FRACTION,
    "persona.text_length": _at_least(1),
    "persona.vocab_buckets": _at_least(1),
    "persona.target_fraction": _OPEN_UNIT,
    "persona.epochs": _at_least(1),
    "persona.batch_size": _at_least(2),
    "persona.learning_rate": _POSITIVE,
    "multimodal.base": _one_of("two_tower", "ncf"),
    "multimodal.modalities": _one_of(*MODALITIES),
    "multimodal.image_encoder": _one_of("cnn", "backbone"),
    "multimodal.image_size": _at_least(8),
    "multimodal.cnn_filters": _at_least(1),
    "multimodal.text_encoder": _one_of("minilm", "hashed"),
    "multimodal.text_sequence_length": _at_least(1),
    "multimodal.hashed_text_dim": _at_least(1),
    "multimodal.encode_batch_size": _at_least(1),
    "multimodal.embedding_dim": _at_least(1),
    "multimodal.fusion": _one_of("attention", "gated", "concat"),
    "multimodal.num_heads": _at_least(1),
    "multimodal.projection_dims": _at_least(1),
    "multimodal.alignment_weight": _NON_NEGATIVE,
    "multimodal.alignment_temperature": _POSITIVE,
    "decode.decoder": _one_of("poster_decoder", "stable_diffusion"),
    "decode.image_height": _at_least(8),
    "decode.image_width": _at_least(8),
    "decode.embedding_dim": _at_least(2),
    "decode.filters": _at_least(1),
    "decode.latent_noise": _NON_NEGATIVE,
    "decode.ssim_weight": _NON_NEGATIVE,
    "decode.epochs": _at_least(1),
    "decode.batch_size": _at_least(1),
    "decode.learning_rate": _POSITIVE,
    "decode.valid_fraction": _FRACTION,
    "decode.test_fraction": _FRACTION,
    "decode.image_guidance_scales": _NON_NEGATIVE,
    "decode.steps": _at_least(1),
    "decode.sd_weights": _one_of("pretrained", "random"),
    "decode.sd_height": _at_least(64),
    "decode.sd_width": _at_least(64),
    "decode.num_context_tokens": _at_least(1),
    "decode.adapter_hidden_dim": _at_least(1),
    "decode.adapter_epochs": _at_least(1),
    "decode.adapter_batch_size": _at_least(1),
    "decode.adapter_learning_rate": _POSITIVE,
    "decode.cond_drop_prob": _PROBABILITY,
    "decode.max_posters": _NON_NEGATIVE,
    "diffusion.timesteps": _at_least(2),
    "diffusion.schedule": _one_of("linear", "cosine", "scaled_linear"),
    "diffusion.parameterization": _one_of("epsilon", "x0", "v"),
    "diffusion.num_tokens": _at_least(1),
    "diffusion.width": _at_least(1),
    "diffusion.depth": _at_least(1),
    "diffusion.num_heads": _at_least(1),
    "diffusion.conditioning": _one_of("adaln", "cross", "both"),
    "diffusion.p_drop_user": _PROBABILITY,
    "diffusion.p_drop_score": _PROBABILITY,
    "diffusion.snr_weighting": _one_of("none", "min_snr"),
    "diffusion.snr_gamma": _POSITIVE,
    "diffusion.epochs": _at_least(1),
    "diffusion.batch_size": _at_least(1),
    "diffusion.learning_rate": _POSITIVE,
    "diffusion.sampler": _one_of("ddim", "ddpm"),
    "diffusion.sampling_steps": _at_least(1),
    "diffusion.eta": _PROBABILITY,
    "diffusion.guidance_scale": _NON_NEGATIVE,
    "diffusion.sweep_scales": _NON_NEGATIVE,
    "diffusion.eval_users": _NON_NEGATIVE,
    "diffusion.samples_per_user": _at_least(1),
    "diffusion.random_users": _NON_NEGATIVE,
}


def check(cfg: Config) -> None:
    """The checks that involve several fields (per-field ones run whenever
    a `Config` is built).

    Raises:
        ValueError: naming the keys and what they must satisfy.
    """
    d = cfg.data
    if (
        d.split in ORDERED_SPLITS
        and d.timestamp_col is None
        and not d.order_by_file
    ):
        raise ValueError(
            f"`data.split={d.split!r}` orders each user's interactions by "
            "time, but `data.timestamp_col` is None. Set "
            "`data.timestamp_col` to the time column, or "
            "`data.split='random'`, or `data.order_by_file=True` if the "
            f"rows of {pathlib.Path(d.path).name} are in time order."
        )
    if d.split in ("chrono", "random") and (
        d.valid_fraction + d.test_fraction >= 1
    ):
        raise ValueError(
            "`data.valid_fraction` + `data.test_fraction` must be < 1 so "
            "that every user keeps training data. Received: "
            f"{d.valid_fraction} + {d.test_fraction}"
        )
    if cfg.diffusion.sampling_steps > cfg.diffusion.timesteps:
        raise ValueError(
            "`diffusion.sampling_steps` must be <= `diffusion.timesteps` "
            f"({cfg.diffusion.timesteps}). Received: "
            f"{cfg.diffusion.sampling_steps}"
        )
    for key in ("sd_height", "sd_width"):
        value = getattr(cfg.decode, key)
        if value % 64:
            raise ValueError(
                f"Config key `decode.{key}` must be a multiple of 64. "
                f"Received: {value}"
            )
    if not cfg.output.run_name or any(c in cfg.output.run_name for c in "/\\"):
        raise ValueError(
            "Config key `output.run_name` must be a non-empty folder name "
            f"without path separators. Received: {cfg.output.run_name!r}"
        )


def _check_fields(node, prefix: str) -> None:
    """Apply `RULES` to every field of `node` (a config section) and its
    sub-sections."""
    for f in dataclasses.fields(node):
        key = prefix + f.name
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _check_fields(value, key + ".")
            continue
        rule = RULES.get(key)
        if rule is None:
            continue
        for element in value if isinstance(value, tuple) else (value,):
            problem = rule.problem(element)
            if problem:
                raise ValueError(
                    f"Config key `{key}` {problem}. Received: {value!r}"
                )


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
