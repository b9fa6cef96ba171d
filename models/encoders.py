"""Per-modality item encoders for the multimodal model.

Trainable encoders (Keras layers, run inside the model):

- `ConvImageEncoder`: a small strided CNN over host-normalised pixels,
  the default image encoder; it needs no download and trains end to end.
- `FeatureProjection`: an MLP over a fixed vector (frozen text or image
  features, standardised numbers), giving the modality's token.

Frozen encoders (run once on the host; outputs go to the feature cache):

- `image_backbone(name, size, weights)`: a pretrained keras.applications
  model (`"MobileNetV3Small"`, `"EfficientNetB0"`, ...) or a keras-hub
  backbone (`"keras_hub:<preset>"`), global-average pooled. Weights are
  downloaded by Keras on first use, so this path is for users with network
  access; `weights=None` builds the same network randomly initialised.
  `item_content.embed_images` streams image files through it.
- Text: see `models/text_encoders.py` (MiniLM, hashed TF-IDF).
"""

import importlib
import logging

import keras
from keras import ops

from models.layers import MLPTower

logger = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="recsys")
class ConvImageEncoder(keras.layers.Layer):
    """Strided convolutions, global average pooling, a linear output.

    Each stage is a 3x3 convolution with stride 2 and GELU, so a 32 px image
    is 4 x 4 after three stages; the pooled map goes through `Dense`.

    Args:
        image_size: int >= 8, side of the square RGB input.
        output_dim: int >= 1, width of the output token.
        filters: tuple of ints >= 1, channels per stage. Defaults to
            `(16, 32, 64)`.
        dropout: float in `[0, 1)`, dropout before the output layer.
        seed: optional int for dropout.

    Call arguments:
        pixels: `(batch, image_size * image_size * 3)` floats in [-1, 1]
            (flat, as stored in the item matrix) or
            `(batch, image_size, image_size, 3)`.
        training: bool.

    Returns:
        `(batch, output_dim)` tensor.
    """

    def __init__(
        self,
        image_size,
        output_dim,
        filters=(16, 32, 64),
        dropout=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if image_size < 8:
            raise ValueError(
                f"`image_size` must be >= 8. Received: {image_size}"
            )
        if output_dim < 1:
            raise ValueError(
                f"`output_dim` must be >= 1. Received: {output_dim}"
            )
        if not filters or any(int(f) < 1 for f in filters):
            raise ValueError(
                "`filters` must be a non-empty tuple of ints >= 1. "
                f"Received: {filters}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"`dropout` must be in [0, 1). Received: {dropout}"
            )
        self.image_size = int(image_size)
        self.output_dim = int(output_dim)
        self.filters = tuple(int(f) for f in filters)
        self.dropout = dropout
        self.seed = seed
        self.convs = [
            keras.layers.Conv2D(
                f,
                3,
                strides=2,
                padding="same",
                activation="gelu",
                dtype=self.dtype_policy,
                name=f"conv_{i}",
            )
            for i, f in enumerate(self.filters)
        ]
        self.pool = keras.layers.GlobalAveragePooling2D(dtype=self.dtype_policy)
        self.drop = keras.layers.Dropout(
            dropout, seed=seed, dtype=self.dtype_policy
        )
        self.out = keras.layers.Dense(
            output_dim, dtype=self.dtype_policy, name="output"
        )

    def build(self, input_shape):
        s = self.image_size
        shape = (None, s, s, 3)
        for conv in self.convs:
            conv.build(shape)
            s = -(-s // 2)
            shape = (None, s, s, conv.filters)
        self.out.build((None, self.filters[-1]))
        self.built = True

    def call(self, pixels, training=False):
        s = self.image_size
        x = ops.reshape(ops.cast(pixels, self.compute_dtype), (-1, s, s, 3))
        for conv in self.convs:
            x = conv(x)
        x = self.pool(x)  # (batch, filters[-1])
        return self.out(self.drop(x, training=training))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "output_dim": self.output_dim,
                "filters": self.filters,
                "dropout": self.dropout,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="recsys")
class FeatureProjection(MLPTower):
    """An MLP from a fixed feature vector to a modality token (no L2 norm).

    `MLPTower` with `normalize=False`: GELU hidden layers with dropout and
    a linear output, for frozen text or image vectors and standardised
    numbers.

    Args:
        hidden_dims: tuple of ints, hidden widths (may be empty).
        output_dim: int >= 1, token width.
        dropout: float in `[0, 1)`.
        seed: optional int.
    """

    def __init__(
        self, hidden_dims=(), output_dim=64, dropout=0.0, seed=None, **kwargs
    ):
        kwargs.pop("normalize", None)
        super().__init__(
            hidden_dims=hidden_dims,
            output_dim=output_dim,
            dropout=dropout,
            normalize=False,
            seed=seed,
            **kwargs,
        )


def image_backbone(name, size, weights="imagenet"):
    """A frozen image feature extractor: uint8-range RGB in, pooled
    features out.

    Args:
        name: a `keras.applications` class name (e.g. `"MobileNetV3Small"`,
            `"EfficientNetB0"`, `"ResNet50"`), or `"keras_hub:<preset>"`
            for a keras-hub image backbone.
        size: int, square input side in pixels (keras.applications needs
            >= 32).
        weights: `"imagenet"` (downloaded by Keras on first use, then
            cached in `~/.keras`), None for random initialisation, or a
            weights file path.

    Returns:
        A `keras.Model` mapping `(batch, size, size, 3)` floats in [0, 255]
        to `(batch, features)`.
    """
    inputs = keras.Input((size, size, 3))
    if str(name).startswith("keras_hub:"):
        import keras_hub  # imports TensorFlow: only for keras-hub backbones

        preset = name.split(":", 1)[1]
        backbone = keras_hub.models.Backbone.from_preset(
            preset, load_weights=weights is not None
        )
        converter = keras_hub.layers.ImageConverter.from_preset(
            preset, image_size=(size, size)
        )
        features = backbone(converter(inputs))
        if isinstance(features, dict):
            features = features[sorted(features)[-1]]
    else:
        cls = getattr(keras.applications, str(name), None)
        if cls is None or not callable(cls):
            raise ValueError(
                f"`image_backbone` {name!r} is not a keras.applications "
                "model (e.g. 'MobileNetV3Small', 'EfficientNetB0') nor "
                "'keras_hub:<preset>'."
            )
        kwargs = {}
        if name.startswith("MobileNetV3"):
            # Its preprocessing is built into the model.
            kwargs["include_preprocessing"] = True
        backbone = cls(
            include_top=False,
            weights=weights,
            input_shape=(size, size, 3),
            pooling=None,
            **kwargs,
        )
        module = _applications_module(name)
        x = inputs
        if module is not None and not kwargs:
            x = module.preprocess_input(x)
        features = backbone(x)
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D()(features)
    elif len(features.shape) == 3:
        features = keras.layers.GlobalAveragePooling1D()(features)
    model = keras.Model(inputs, features, name=f"frozen_{_safe(name)}")
    model.trainable = False
    logger.info(
        "image backbone %s (weights=%s, %dpx): features=%d params=%d",
        name,
        weights,
        size,
        features.shape[-1],
        model.count_params(),
    )
    return model


def _applications_module(name):
    """The keras.applications submodule holding `name`'s preprocess_input."""

    families = {
        "MobileNetV2": "mobilenet_v2",
        "MobileNet": "mobilenet",
        "EfficientNetV2": "efficientnet_v2",
        "EfficientNet": "efficientnet",
        "ResNet50V2": "resnet_v2",
        "ResNet101V2": "resnet_v2",
        "ResNet152V2": "resnet_v2",
        "ResNet": "resnet",
        "ConvNeXt": "convnext",
        "DenseNet": "densenet",
        "VGG16": "vgg16",
        "VGG19": "vgg19",
        "Xception": "xception",
        "InceptionV3": "inception_v3",
        "InceptionResNetV2": "inception_resnet_v2",
        "NASNet": "nasnet",
        "RegNet": "regnet",
    }
    for prefix, module in families.items():
        if name.startswith(prefix):
            return importlib.import_module(f"keras.applications.{module}")
    return None


def _safe(name):
    return "".join(c if c.isalnum() else "_" for c in str(name))
