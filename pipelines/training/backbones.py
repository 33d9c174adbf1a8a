"""The backbones a challenger can be built on: the eight Keras applications of the seed
article, each with its own input preprocessing, block names, input sizes and ImageNet notop
weights file, and the article's small convnet trained from scratch.

A block is what `train.unfreeze_from` names: fine-tuning trains that block and every layer
after it. Backbones whose layers carry their block's name (`conv5_block1_1_conv`) start a
block at its first such layer; the Inception family names only the layer that ends a block
(`mixed8`), so a block starts right after the one before it ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import keras

# What a challenger's run and model version say it is built of.
BACKBONE_TAG = "backbone"  # resnet50, densenet201, ..., or convnet
APPROACH_TAG = "approach"  # fine_tune | feature_extraction | convnet
TRAINED_PARAMETERS_TAG = "parameters_trained"
TOTAL_PARAMETERS_TAG = "parameters_total"
ARCHITECTURE_TAGS = (BACKBONE_TAG, APPROACH_TAG, TRAINED_PARAMETERS_TAG, TOTAL_PARAMETERS_TAG)


def architecture_of(tags: Mapping[str, str]) -> str:
    """ "densenet201, feature_extraction" from a run's or version's tags; "" before they
    were recorded."""
    return ", ".join(tags[key] for key in (BACKBONE_TAG, APPROACH_TAG) if tags.get(key))


Preprocessing = Literal["caffe", "tf", "torch"]  # keras.applications' preprocess_input modes
_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications"


@dataclass(frozen=True)
class Block:
    name: str
    starts_after: str | None = None  # the layer ending the block before; None: named layers


@dataclass(frozen=True)
class ImageNetFile:
    """Keras' ImageNet weights without the top, as `keras.applications` downloads them."""

    name: str  # the file's name in Keras' cache (~/.keras/models)
    url: str
    md5: str


@dataclass(frozen=True)
class Backbone:
    name: str  # train.backbone, and the backbone's layer name inside the classifier
    application: str  # its constructor in keras.applications
    preprocessing: Preprocessing
    blocks: tuple[Block, ...]
    min_size: int  # the smallest image side the architecture accepts
    imagenet: ImageNetFile
    imagenet_size: int | None = None  # the only image side its ImageNet weights fit

    def build(self, size: int, weights_file: str | None) -> keras.Model:
        import keras

        constructor = getattr(keras.applications, self.application)
        model: keras.Model = constructor(
            include_top=False, weights=weights_file, input_shape=(size, size, 3), name=self.name
        )
        return model

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(block.name for block in self.blocks)

    def first_layer_of(self, block_name: str, layer_names: Sequence[str]) -> int:
        """The index, among the backbone's layers, of the first layer of `block_name`."""
        block = next(block for block in self.blocks if block.name == block_name)
        if block.starts_after is not None:
            return list(layer_names).index(block.starts_after) + 1
        prefix = f"{block.name}_"
        return next(i for i, name in enumerate(layer_names) if name.startswith(prefix))


def _named(*names: str) -> tuple[Block, ...]:
    return tuple(Block(name) for name in names)


def _after(*pairs: tuple[str, str]) -> tuple[Block, ...]:
    return tuple(Block(name, starts_after) for name, starts_after in pairs)


def _weights(folder: str, name: str, md5: str, remote: str | None = None) -> ImageNetFile:
    return ImageNetFile(name, f"{_ORIGIN}/{folder}/{remote or name}", md5)


def _notop(model: str) -> str:
    return f"{model}_weights_tf_dim_ordering_tf_kernels_notop.h5"


BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        Backbone(
            "resnet50", "ResNet50", "caffe",
            _named("conv1", "conv2", "conv3", "conv4", "conv5"), 32,
            _weights("resnet", _notop("resnet50"), "4d473c1dd8becc155b73f8504c6f6626"),
        ),
        Backbone(
            "vgg16", "VGG16", "caffe",
            _named("block1", "block2", "block3", "block4", "block5"), 32,
            _weights("vgg16", _notop("vgg16"), "6d6bbae143d832006294945121d1f1fc"),
        ),
        Backbone(
            "vgg19", "VGG19", "caffe",
            _named("block1", "block2", "block3", "block4", "block5"), 32,
            _weights("vgg19", _notop("vgg19"), "253f8cb515780f3b799900260a226db6"),
        ),
        Backbone(
            "inception_resnet_v2", "InceptionResNetV2", "tf",
            _after(("block35", "mixed_5b"), ("block17", "mixed_6a"), ("block8", "mixed_7a")), 75,
            _weights("inception_resnet_v2", _notop("inception_resnet_v2"),
                     "d19885ff4a710c122648d3b5c3b684e4"),
        ),
        Backbone(
            "xception", "Xception", "tf",
            _named(*(f"block{i}" for i in range(1, 15))), 71,
            _weights("xception", _notop("xception"), "b0042744bf5b25fce3cb969f33bebb97"),
        ),
        Backbone(
            "inception_v3", "InceptionV3", "tf",
            _after(*((f"mixed{i}", f"mixed{i - 1}") for i in range(1, 11))), 75,
            _weights("inception_v3", _notop("inception_v3"), "bcbd6486424b2319ff4ef7d526e38f63"),
        ),
        Backbone(
            "densenet201", "DenseNet201", "torch",
            _named("conv1", "conv2", "conv3", "conv4", "conv5"), 32,
            _weights("densenet", _notop("densenet201"), "c13680b51ded0fb44dff2d8f86ac8bb1"),
        ),
        Backbone(
            "nasnet_large", "NASNetLarge", "tf",
            _after(("normal_0", "reduction_concat_stem_2"),
                   ("normal_7", "reduction_concat_reduce_6"),
                   ("normal_13", "reduction_concat_reduce_12")), 32,
            _weights("nasnet", "nasnet_large_no_top.h5", "d81d89dc07e6e56530c4e77faddd61b5",
                     remote="NASNet-large-no-top.h5"),
            imagenet_size=331,
        ),
    )
}  # fmt: skip
CONVNET = "convnet"  # the article's small convnet: its own base, no pretrained weights


@dataclass(frozen=True)
class ConvnetShape:
    """The article's convnet from scratch: blocks of two 3x3 convolutions with batch
    normalisation, then max pooling, each block `filters[i]` wide; a dense layer after the
    pooling; L2 on every kernel."""

    filters: tuple[int, ...] = (32, 64, 128, 256, 512)
    dense_units: int = 256
    l2: float = 1e-4


def convnet(size: int, shape: ConvnetShape, seed: int) -> keras.Model:
    """The convnet's feature extractor (the dense layer is part of the head)."""
    import keras

    regulariser = keras.regularizers.L2(shape.l2) if shape.l2 > 0 else None
    images = keras.Input(shape=(size, size, 3), name="convnet_input")
    x: Any = keras.layers.Rescaling(1.0 / 255, name="convnet_rescale")(images)
    for block, width in enumerate(shape.filters, start=1):
        for conv in (1, 2):
            x = keras.layers.Conv2D(
                width, 3, padding="same", use_bias=False, kernel_regularizer=regulariser,
                kernel_initializer=keras.initializers.HeNormal(seed=seed + block * 10 + conv),
                name=f"block{block}_conv{conv}",
            )(x)  # fmt: skip
            x = keras.layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
            x = keras.layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
    return keras.Model(images, x, name=CONVNET)
