"""Images as users and the experiments have them, as uint8 batches ``[N, C, H, W]``.

* :mod:`~detectors.data.files`: one image file (:func:`open_image`; the one list of image
  extensions :data:`IMAGE_EXTENSIONS`, TIFF included) and array files (IDX, CIFAR pickles,
  SVHN ``.mat``, ``.npz``);
* :mod:`~detectors.data.named`: the named offline sets (Fashion-MNIST, MNIST, natural photo
  patches; :func:`load_named`);
* :mod:`~detectors.data.folders`: folders of image files of any size (:class:`ImageFolder`,
  :func:`load_image_folder`; :class:`ImageFiles` and :func:`read_resized` read them one at a
  time), every kind of source by name (:func:`load_source`) and the resize / colour policy of
  detector bundles (:class:`ImagePolicy`);
* :mod:`~detectors.data.photos`: the broad photo set of the general distribution (40 photos).

Layers: ``files`` <- ``named`` <- ``folders``; ``photos`` uses ``named``. Nothing here imports
the rest of ``detectors``.
"""

from .files import (
    GREY_MODES,
    IMAGE_EXTENSIONS,
    DatasetUnavailable,
    load_cifar,
    load_idx_images,
    load_npz,
    load_svhn,
    open_image,
    read_idx,
    to_8bit,
)
from .folders import (
    MAX_IMAGE_SIZE,
    ImageFiles,
    ImageFolder,
    ImagePolicy,
    Source,
    UnreadableImagesWarning,
    describe_skipped,
    load_image_folder,
    load_source,
    read_resized,
)
from .named import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    NAMED_DATASETS,
    NATURAL_PHOTOS,
    broaden,
    load_fashion_mnist,
    load_mnist_5k,
    load_named,
    natural_patches,
    natural_photos,
)

__all__ = [
    "GREY_MODES",
    "IMAGE_EXTENSIONS",
    "DatasetUnavailable",
    "open_image",
    "to_8bit",
    "read_idx",
    "load_idx_images",
    "load_cifar",
    "load_svhn",
    "load_npz",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "NAMED_DATASETS",
    "NATURAL_PHOTOS",
    "broaden",
    "load_fashion_mnist",
    "load_mnist_5k",
    "load_named",
    "natural_patches",
    "natural_photos",
    "MAX_IMAGE_SIZE",
    "ImageFiles",
    "ImageFolder",
    "ImagePolicy",
    "Source",
    "UnreadableImagesWarning",
    "describe_skipped",
    "load_image_folder",
    "load_source",
    "read_resized",
]
