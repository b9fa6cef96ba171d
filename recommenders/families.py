"""Every recommender family the toolkit knows, registered in one place.

Adding a model family is one network file in `models/`, one `register(...)`
block here and its config fields (see docs/architecture.md, "Adding a
model"). A Keras family whose training examples are (user, item)
interactions only needs a `KerasSpec`: a function building the network from
the recommender's settings, and how it scores.
"""

import dataclasses
import json

import data
from content import items as content_items
from content.personas import corpus as persona_corpus
from content.personas import generate as persona_generate
from diffusion.interactions import DiffusionCF
from eval import baselines
from models.autoencoders import VAECF
from models.ncf import NCF
from models.sasrec import SASRec
from models.two_tower import TwoTower
from recommenders.keras_recommender import KerasRecommender
from recommenders.keras_recommender import KerasSpec
from recommenders.keras_recommender import vector_batches
from recommenders.persona_reranker import PersonaReranker
from recommenders.registry import INFO_FILE
from recommenders.registry import Family
from recommenders.registry import get
from recommenders.registry import load
from recommenders.registry import register
from recommenders.registry import register_loader

# ---------------------------------------------------------------------------
# Two-tower retrieval
# ---------------------------------------------------------------------------


def _two_tower_model(rec, num_users, num_items, only=None):
    del only  # one branch only
    mc = rec.model_cfg
    encoder = rec.item_encoder()
    model = TwoTower(
        num_users=num_users,
        num_items=num_items,
        embedding_dim=mc.embedding_dim,
        id_embedding_dim=mc.id_embedding_dim,
        hidden_dims=mc.hidden_dims,
        dropout=mc.dropout,
        l2=mc.l2,
        loss=rec.loss,
        temperature=mc.temperature,
        use_logq=mc.use_logq,
        history_length=mc.history_length if mc.use_history else 0,
        use_user_id=mc.use_user_id,
        num_user_features=0
        if rec.user_features is None
        else rec.user_features.shape[1],
        num_item_features=0
        if rec.item_features is None
        else rec.item_features.shape[1],
        seed=rec.seed,
        item_encoder=encoder,
        use_item_id=encoder is None or rec.multimodal_cfg.use_item_id,
        mask_known=mc.mask_known,
    )
    if rec.loss == "full_softmax" and rec.item_features is not None:
        model.set_item_feature_table(rec.item_features)
    return model


TWO_TOWER = KerasSpec(
    name="two_tower",
    build_model=_two_tower_model,
    scoring="dot",
    default_loss="softmax",
    uses_history=True,
    wants_item_features=lambda mc: mc.use_item_features,
)

# ---------------------------------------------------------------------------
# Neural collaborative filtering (NeuMF)
# ---------------------------------------------------------------------------


def _ncf_model(rec, num_users, num_items, only=None):
    mc = rec.model_cfg
    encoder = rec.item_encoder()
    num_features = (
        0 if rec.item_features is None else rec.item_features.shape[1]
    )
    item_input = mc.item_input
    if encoder is not None:
        item_input = "both" if rec.multimodal_cfg.use_item_id else "features"
    return NCF(
        num_users=num_users,
        num_items=num_items,
        item_input=item_input,
        num_item_features=num_features,
        gmf_dim=mc.gmf_dim,
        mlp_embedding_dim=mc.id_embedding_dim,
        mlp_dims=mc.mlp_dims,
        dropout=mc.dropout,
        l2=mc.l2,
        use_gmf=only != "mlp",
        use_mlp=only != "gmf",
        loss=rec.loss,
        seed=rec.seed,
        item_encoder=encoder,
    )


def _ncf_pretrain(rec, train, epochs):
    """He et al. 2017, 3.4.1: train GMF-only and MLP-only models, then
    start NeuMF from their weights."""
    parts = {}
    for branch in ("gmf", "mlp"):
        sub = KerasRecommender(
            rec.spec,
            dataclasses.replace(rec.model_cfg, pretrain=False),
            rec.train_cfg,
            ks=rec.ks,
            memory_budget_mb=rec.memory_budget_mb,
            seed=rec.seed,
        )
        sub.item_features = rec.item_features
        sub.model = sub.build_model(
            train.num_users, train.num_items, only=branch
        )
        sub.fit(train, None, epochs=epochs, warm_start=True)
        parts[branch] = sub.model
    return NCF.from_pretrained(parts["gmf"], parts["mlp"])


NCF_SPEC = KerasSpec(
    name="ncf",
    build_model=_ncf_model,
    scoring="pairwise",
    default_loss="bce",
    wants_item_features=lambda mc: mc.item_input != "id",
    pretrain=_ncf_pretrain,
)

# ---------------------------------------------------------------------------
# Sequence-aware user tower (SASRec)
# ---------------------------------------------------------------------------


def _sasrec_model(rec, num_users, num_items, only=None):
    del only  # one branch only
    mc = rec.model_cfg
    if rec.loss != "full_softmax":
        raise ValueError(
            "`model.name='sasrec'` trains with a next-item softmax over the "
            f"catalog: `model.loss` must be 'auto' or 'full_softmax'. "
            f"Received: {mc.loss!r}"
        )
    num_features = (
        0 if rec.item_features is None else rec.item_features.shape[1]
    )
    model = SASRec(
        num_users=num_users,
        num_items=num_items,
        embedding_dim=mc.embedding_dim,
        history_length=mc.history_length,
        num_blocks=mc.attention_blocks,
        num_heads=mc.attention_heads,
        dropout=mc.attention_dropout,
        num_item_features=num_features,
        time_buckets=mc.time_buckets,
        l2=mc.l2,
        seed=rec.seed,
    )
    if num_features:
        model.set_item_feature_table(rec.item_features)
    return model


def _sasrec_batches(rec, train, labels):
    del labels  # the next items are the targets
    return data.SequenceBatches(
        train,
        rec.model_cfg.history_length,
        rec.train_cfg.positions_per_step,
        seed=rec.seed,
        time_buckets=rec.model_cfg.time_buckets,
        workers=rec.scale_cfg.workers,
        use_multiprocessing=rec.scale_cfg.use_multiprocessing,
    )


def _sasrec_user_tables(rec, interactions):
    mc = rec.model_cfg
    if not mc.time_buckets:
        return {}
    return {
        "history_age": data.history_ages(
            interactions, mc.history_length, mc.time_buckets
        )
    }


SASREC = KerasSpec(
    name="sasrec",
    build_model=_sasrec_model,
    scoring="dot",
    default_loss="full_softmax",
    uses_history=True,
    wants_item_features=lambda mc: mc.use_item_features,
    reads_user_features=False,
    batches=_sasrec_batches,
    user_tables=_sasrec_user_tables,
    batch_field="positions_per_step",
)

# ---------------------------------------------------------------------------
# Autoencoder and diffusion over the interaction vector
# ---------------------------------------------------------------------------


def _vector_loss(name):
    def check(rec):
        if rec.model_cfg.loss not in ("auto", rec.spec.default_loss):
            raise ValueError(
                f"`model.name={name!r}` has its own loss: leave `model.loss` "
                f"at 'auto'. Received: {rec.model_cfg.loss!r}"
            )

    return check


def _vae_model(rec, num_users, num_items, only=None):
    del only  # one branch only
    mc = rec.model_cfg
    _vector_loss("vae")(rec)
    return VAECF(
        num_users=num_users,
        num_items=num_items,
        hidden_dims=mc.hidden_dims,
        latent_dim=mc.latent_dim,
        dropout=mc.dropout,
        kl_weight=mc.kl_weight,
        kl_scaling=mc.kl_scaling,
        kl_anneal_steps=mc.kl_anneal_steps,
        seed=rec.seed,
    )


VAE = KerasSpec(
    name="vae",
    build_model=_vae_model,
    scoring="vector",
    default_loss="multinomial",
    reads_user_features=False,
    batches=vector_batches,
)


def _diffusion_cf_model(rec, num_users, num_items, only=None):
    del only  # one branch only
    mc = rec.model_cfg
    _vector_loss("diffusion_cf")(rec)
    return DiffusionCF(
        num_users=num_users,
        num_items=num_items,
        hidden_dims=mc.hidden_dims,
        dropout=mc.dropout,
        num_timesteps=mc.diffusion_steps,
        noise_scale=mc.noise_scale,
        noise_min=mc.noise_min,
        noise_max=mc.noise_max,
        start_step=mc.start_step,
        seed=rec.seed,
    )


DIFFUSION_CF = KerasSpec(
    name="diffusion_cf",
    build_model=_diffusion_cf_model,
    scoring="vector",
    default_loss="x0_mse",
    reads_user_features=False,
    batches=vector_batches,
)

KERAS_SPECS = {}


def keras_recommender(cfg, spec, item_features=None, user_features=None):
    """A fresh `KerasRecommender` of `spec` with `cfg`'s settings."""
    return KerasRecommender(
        spec,
        cfg.model,
        cfg.train,
        item_features=item_features,
        user_features=user_features,
        ks=cfg.eval.ks,
        memory_budget_mb=cfg.eval.memory_budget_mb,
        seed=cfg.seed,
        multimodal_cfg=cfg.multimodal,
        scale_cfg=cfg.scale,
    )


def _keras_memory(spec):
    """A rough fitting peak of a `KerasRecommender` of `spec`: weights and
    two Adam moments, one batch's logits, the history table, the data."""

    def memory(cfg, num_users, num_items, nnz):
        mc, tc = cfg.model, cfg.train
        loss = spec.default_loss if mc.loss == "auto" else mc.loss
        batch = getattr(tc, spec.batch_field)
        if spec.scoring == "vector":
            width = max(mc.hidden_dims + (mc.latent_dim,))
            params = 2 * num_items * width
            activations = 16 * batch * num_items
            history = 0
        elif spec.scoring == "dot":
            users = num_users if mc.use_user_id else 0
            params = (2 * num_items + users) * mc.id_embedding_dim
            activations = 16 * batch**2
            if loss == "full_softmax":  # logits, softmax and their gradient
                activations = 12 * batch * num_items
            history = 4 * num_users * mc.history_length
        else:
            params = (num_users + num_items) * (
                mc.gmf_dim + mc.id_embedding_dim
            )
            activations = 256 * batch * (1 + tc.num_negatives)
            history = 0
        return 12 * params + activations + history + 16 * nnz

    return memory


def register_keras(spec, summary, pointwise=False):
    """Register a `KerasRecommender` family: built from `cfg.model` and the
    dataset's feature tables, loaded back by `spec.name`."""

    def build(cfg, dataset):
        return keras_recommender(
            cfg,
            spec,
            item_features=None if dataset is None else dataset.item_features,
            user_features=None if dataset is None else dataset.user_features,
        )

    KERAS_SPECS[spec.name] = spec
    register(
        Family(
            name=spec.name,
            kind="keras",
            build=build,
            section="model",
            summary=summary,
            default_loss=spec.default_loss,
            pointwise=pointwise,
            memory=_keras_memory(spec),
        )
    )


register_keras(
    TWO_TOWER,
    "two-tower retrieval: history-pooling user tower, item tower with "
    "features, in-batch softmax with logQ (default)",
)
register_keras(
    NCF_SPEC,
    "NeuMF (GMF + MLP), BCE over sampled negatives or BPR",
    pointwise=True,
)
register_keras(
    SASREC,
    "SASRec: causal self-attention over the last items, next-item "
    "softmax over the catalog at every position",
)
register_keras(
    VAE,
    "Mult-VAE / RecVAE-style autoencoder over the interaction vector",
)
register_keras(
    DIFFUSION_CF,
    "DiffRec-style denoising diffusion over the interaction vector",
)

# `multimodal` is either family above with the content encoder as its item
# side (`multimodal.base`).
MULTIMODAL = {
    spec.name: dataclasses.replace(spec, name="multimodal", content_items=True)
    for spec in (TWO_TOWER, NCF_SPEC)
}


def _build_multimodal(cfg, dataset):
    if dataset is None:
        raise ValueError(
            "`model.name='multimodal'` needs a dataset with raw item ids "
            "to join item content on."
        )
    features = content_items.multimodal_item_features(
        cfg.multimodal, cfg.data.item_features, dataset.item_ids
    )
    return keras_recommender(
        cfg,
        MULTIMODAL[cfg.multimodal.base],
        item_features=features,
        user_features=dataset.user_features,
    )


def _load_keras(path):
    info = json.loads((path / INFO_FILE).read_text())
    family = info.get("family", info["model"]["name"])
    if family == "multimodal":
        spec = MULTIMODAL[info["multimodal"]["base"]]
    else:
        spec = KERAS_SPECS[family]
    return KerasRecommender.load(path, spec)


register(
    Family(
        name="multimodal",
        kind="keras",
        build=_build_multimodal,
        section="multimodal",
        summary="two-tower or NCF with an image + text + numeric item encoder",
    )
)
register_loader("keras", _load_keras)

# ---------------------------------------------------------------------------
# Persona reranking over any other family
# ---------------------------------------------------------------------------


def _build_persona(cfg, dataset):
    """A fresh `PersonaReranker` over `persona.first_stage` (any other
    `model.name`; `model.baseline_params` go to it)."""
    pc = cfg.persona
    if pc.first_stage == "persona":
        raise ValueError(
            "`persona.first_stage` must name another model, e.g. 'ease' or "
            "'two_tower'. Received: 'persona'"
        )
    if pc.generator == "llm" and pc.personas_path is None:
        raise ValueError(
            "The reranker does not call the LLM while fitting: run `python "
            "main.py build_personas --set persona.generator=llm` and set "
            "`persona.personas_path` to its personas.jsonl."
        )
    first_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, name=pc.first_stage)
    )
    first = get(pc.first_stage).build(first_cfg, dataset)
    corpus = persona_corpus.build_corpus(dataset, cfg.data, pc)
    embedder = None
    if pc.encoder == "minilm":
        embedder = persona_generate.text_embedder(
            cfg.run_dir / "persona_cache", pc.minilm_length
        )
    return PersonaReranker(
        first,
        persona_generate.make_source(pc, corpus, dataset, cfg.seed),
        text_embedder=embedder,
        encoder=pc.encoder,
        num_personas=pc.num_personas,
        candidates=pc.candidates,
        blend_weight=pc.blend_weight,
        aggregation=pc.aggregation,
        temperature=pc.temperature,
        label_smoothing=pc.label_smoothing,
        profile_length=pc.profile_length,
        recency_gamma=pc.recency_gamma,
        embedding_dim=pc.embedding_dim,
        hidden_dims=pc.hidden_dims,
        dropout=pc.dropout,
        text_length=pc.text_length,
        vocab_buckets=pc.vocab_buckets,
        target_fraction=pc.target_fraction,
        epochs=pc.epochs,
        batch_size=pc.batch_size,
        learning_rate=pc.learning_rate,
        patience=cfg.train.early_stopping_patience,
        jit_compile=cfg.train.jit_compile,
        verbose=cfg.train.verbose,
        seed=cfg.seed,
    )


register(
    Family(
        name="persona",
        kind="reranker",
        build=_build_persona,
        section="persona",
        summary="reranks a first stage's top-M by item personas vs the user's "
        "recent history",
    )
)
register_loader(
    "persona", lambda path: PersonaReranker.load(path, load_first_stage=load)
)

# ---------------------------------------------------------------------------
# Baselines (eval/baselines.py)
# ---------------------------------------------------------------------------


def _baseline_memory(cls):
    def memory(cfg, num_users, num_items, nnz):
        return cls.memory_bytes(num_users, num_items, nnz)

    return memory


def _build_baseline(name):
    def build(cfg, dataset):
        del dataset  # baselines read only the interactions given to fit
        model = baselines.make_baseline(name, **cfg.model.baseline_params)
        model.memory_warning_bytes = cfg.eval.memory_warning_gb * 2**30
        return model

    return build


for _name, _cls in baselines.BASELINES.items():
    register(
        Family(
            name=_name,
            kind="baseline",
            build=_build_baseline(_name),
            section="model.baseline_params",
            summary=(_cls.__doc__ or _name).strip().splitlines()[0],
            memory=_baseline_memory(_cls),
        )
    )
register_loader("baseline", baselines.Baseline.load)
