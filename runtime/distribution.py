"""Where and at which precision a Keras model trains.

Two settings of `config.ScaleConfig`, applied around building and fitting a
model (`training_scope`):

- `distribution`: Keras's own `keras.distribution` API, which Keras
  implements for the JAX backend. `data_parallel` replicates the model on
  every device and splits each batch between them
  (`keras.distribution.DataParallel`); `model_parallel` lays the devices out
  as a `(batch, model)` mesh and shards every embedding table along its
  embedding dimension over the `model` axis
  (`keras.distribution.ModelParallel` with a `LayoutMap`), so a catalog too
  large for one device fits on several. Sharding the table's columns rather
  than its rows works for any number of rows (JAX needs a sharded dimension
  divisible by the mesh axis; embedding widths are chosen, catalog sizes are
  not). On several hosts, `keras.distribution.initialize()` is called first
  when `KERAS_DISTRIBUTION_NUM_PROCESSES` says there is more than one
  process, and each process feeds its own slice of every global batch
  (`ProcessShard`).
- `mixed_precision`: the Keras dtype policy (`mixed_bfloat16`,
  `mixed_float16`) under which the model's layers are built: variables stay
  float32, computation runs in the lower precision, and the models compute
  their losses in float32. `compile()` wraps the optimizer in a
  `LossScaleOptimizer` under `mixed_float16` by itself.

TensorFlow users scale out with `tf.distribute` strategies instead (see the
README); this module raises a `ValueError` saying so rather than silently
training on one device.
"""

import contextlib
import logging
import os

import keras

import config as config_lib

logger = logging.getLogger(__name__)

DISTRIBUTIONS = config_lib.DISTRIBUTIONS
PRECISIONS = config_lib.PRECISIONS
# Every embedding table of the model families: `item_embedding/embeddings`,
# `history_embedding/embedding/embeddings`, `gmf_user_embedding/embeddings`.
EMBEDDING_TABLES = r".*embedding.*/embeddings"
BATCH_AXIS = "batch"
MODEL_AXIS = "model"
NUM_PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"


def make_distribution(name, model_parallel=2, devices=None):
    """A `keras.distribution.Distribution` for `name`, or None for `none`.

    Args:
        name: one of `DISTRIBUTIONS`.
        model_parallel: int >= 1, devices on the `model` axis of the mesh
            for `model_parallel`; must divide the number of devices.
        devices: optional device list; default `keras.distribution.
            list_devices()` (all devices of all processes).

    Raises:
        ValueError: unknown name, a backend other than JAX, or a mesh that
            does not fit the devices.
    """
    if name not in DISTRIBUTIONS:
        raise ValueError(
            f"`scale.distribution` must be one of {DISTRIBUTIONS}. "
            f"Received: {name!r}"
        )
    if name == "none":
        return None
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            f"`scale.distribution={name!r}` uses keras.distribution, which "
            f"Keras implements for the JAX backend only. Received backend: "
            f"{backend!r}. Run with KERAS_BACKEND=jax, or on TensorFlow "
            "build and fit the model inside a tf.distribute strategy's "
            "scope (MirroredStrategy for the GPUs of one machine, "
            "MultiWorkerMirroredStrategy with TF_CONFIG for several "
            "machines) and keep `scale.distribution='none'`; see the "
            "README section 'Multi-device training'."
        )
    initialize_multi_host()
    devices = list(
        keras.distribution.list_devices() if devices is None else devices
    )
    if name == "data_parallel":
        return keras.distribution.DataParallel(devices=devices)
    if model_parallel < 1 or len(devices) % model_parallel:
        raise ValueError(
            "`scale.model_parallel` must be >= 1 and divide the number of "
            f"devices ({len(devices)}). Received: {model_parallel}"
        )
    mesh = keras.distribution.DeviceMesh(
        shape=(len(devices) // model_parallel, model_parallel),
        axis_names=(BATCH_AXIS, MODEL_AXIS),
        devices=devices,
    )
    return keras.distribution.ModelParallel(
        layout_map=embedding_layout_map(mesh), batch_dim_name=BATCH_AXIS
    )


def embedding_layout_map(mesh):
    """`LayoutMap` sharding every embedding table's columns over the
    `model` axis of `mesh`; other variables are replicated."""
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[EMBEDDING_TABLES] = (None, MODEL_AXIS)
    return layout_map


def batch_multiple(distribution=None) -> int:
    """Devices that split the batch under `distribution` (default: the
    current one): every batch fed to the model must be a multiple of it.
    1 without a distribution."""
    distribution = distribution or keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    return int(
        mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)]
    )


@contextlib.contextmanager
def training_scope(scale_cfg, batch_size):
    """Build and fit inside this: the dtype policy and the distribution of
    `scale_cfg` (a `config.ScaleConfig`) are current inside it and restored
    after it.

    Raises:
        ValueError: unknown policy or distribution, a non-JAX backend with a
            distribution, or a `batch_size` the batch axis does not divide.
    """
    if scale_cfg.mixed_precision not in PRECISIONS:
        raise ValueError(
            f"`scale.mixed_precision` must be one of {PRECISIONS}. "
            f"Received: {scale_cfg.mixed_precision!r}"
        )
    distribution = make_distribution(
        scale_cfg.distribution, scale_cfg.model_parallel
    )
    replicas = batch_multiple(distribution) if distribution else 1
    if batch_size % replicas:
        raise ValueError(
            f"`train.batch_size` ({batch_size}) must be a multiple of the "
            f"{replicas} devices that split each batch under "
            f"`scale.distribution={scale_cfg.distribution!r}`."
        )
    previous_policy = keras.config.dtype_policy()
    previous_distribution = keras.distribution.distribution()
    keras.config.set_dtype_policy(scale_cfg.mixed_precision)
    if distribution is not None:
        keras.distribution.set_distribution(distribution)
        logger.info(
            "%s over %d devices (mesh %s)",
            scale_cfg.distribution,
            distribution.device_mesh.devices.size,
            dict(
                zip(
                    distribution.device_mesh.axis_names,
                    distribution.device_mesh.shape,
                )
            ),
        )
    try:
        yield distribution
    finally:
        keras.config.set_dtype_policy(previous_policy)
        keras.distribution.set_distribution(previous_distribution)


def initialize_multi_host():
    """Join a multi-process JAX cluster once, when the environment says
    there is one (`KERAS_DISTRIBUTION_NUM_PROCESSES` > 1, with
    `KERAS_DISTRIBUTION_JOB_ADDRESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`;
    see `keras.distribution.initialize`). Returns whether it did."""
    if int(os.environ.get(NUM_PROCESSES_ENV, "1")) <= 1:
        return False
    import jax  # the JAX backend's own package: multi-host runs only

    if jax.process_count() > 1:  # already initialised
        return False
    keras.distribution.initialize()
    logger.info(
        "joined a cluster of %d processes as process %d",
        jax.process_count(),
        jax.process_index(),
    )
    return True


def shard_for_process(batches):
    """`batches` itself in a single-process run; with several JAX
    processes, a `ProcessShard` of it for this process (keeping its
    prefetch settings)."""
    if keras.backend.backend() != "jax":
        return batches
    import jax  # the JAX backend's own package (checked above)

    if jax.process_count() == 1:
        return batches
    return ProcessShard(
        batches,
        jax.process_index(),
        jax.process_count(),
        workers=batches.workers,
        use_multiprocessing=batches.use_multiprocessing,
        max_queue_size=batches.max_queue_size,
    )


class ProcessShard(keras.utils.PyDataset):
    """This process's slice of every global batch of `batches`.

    With several processes, Keras's JAX trainer takes each process's batch
    as that process's part of the global batch. Every process builds the
    same global batch (it depends only on seed, epoch and index) and keeps
    rows `[p * b, (p + 1) * b)` with `b = batch / num_processes`, so the
    processes together see every example once.

    Args:
        batches: a `keras.utils.PyDataset` of `(x dict, y)` batches.
        process_id: int in `[0, num_processes)`.
        num_processes: int >= 1; must divide every batch's size.
    """

    def __init__(self, batches, process_id, num_processes, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"`process_id` must lie in [0, {num_processes}). "
                f"Received: {process_id}"
            )
        self.batches = batches
        self.process_id = process_id
        self.num_processes = num_processes

    def __len__(self):
        return len(self.batches)

    def on_epoch_end(self):
        self.batches.on_epoch_end()

    def __getitem__(self, idx):
        x, y, *weight = self.batches[idx]
        size = len(y)
        if size % self.num_processes:
            raise ValueError(
                f"Batch of {size} rows does not split over "
                f"{self.num_processes} processes."
            )
        part = size // self.num_processes
        rows = slice(self.process_id * part, (self.process_id + 1) * part)
        return ({k: v[rows] for k, v in x.items()}, y[rows]) + tuple(
            w[rows] for w in weight
        )
