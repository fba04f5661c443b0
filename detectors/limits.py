"""The upper bounds of every size, width and count a user sets, in one place: the command
line's flags (``detectors.cli.common`` types), ``detectors.bundle.FitConfig.check`` and
``reproduce --set`` refuse values past them with an error naming the limit.  Past them a model
or a batch asks for more memory than a workstation has (``--size 100000`` or ``--hidden
1000000000`` ask for 100+ GB).  Standard library only: the CLI's parser imports it."""

MAX_IMAGE_SIZE = 256  # image side in pixels (fit --size; the fit's own default is at most 32)
MAX_HIDDEN = 1024  # st-net channels (512 in Kingma & Dhariwal 2018)
MAX_LEVELS = 8  # scales of a multi-scale flow (an image side of 2**8 = 256 at least)
MAX_DEPTH = 128  # flow steps per scale / residual blocks (32 in Kingma & Dhariwal 2018)
MAX_BATCH = 4096  # images per batch
MAX_STEPS = 10_000_000  # optimisation steps
MIN_FEATURE_SIZE, MAX_FEATURE_SIZE = 32, 512  # EfficientNet-Lite0 input side (224 native)
MAX_IMAGES = 100_000_000  # images in a subset (--n)
MAX_THREADS = 1024  # torch intra-op threads
MAX_SEED = 2**32 - 1  # seeds (numpy's generators take 0 .. 2**32 - 1 in every form)
