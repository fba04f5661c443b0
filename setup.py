"""Builds the extension invflow._C from csrc/.

Sources (globs, so a new file needs no edit here): csrc/*.cpp (the schemas and the shared
argument checks), csrc/common/*.cpp (host code shared by both backends) and csrc/cpu/*.cpp
are always built (CppExtension, -O3 -fopenmp at compile and link time so that
at::parallel_for really runs in parallel).  The CUDA kernels in csrc/cuda/*.cu are added
(CUDAExtension) only when torch was built with CUDA and nvcc is found; TORCH_CUDA_ARCH_LIST
is respected and defaults to sm_80, sm_86 and sm_90 plus PTX (newer GPUs JIT-compile it
instead of failing with "no kernel image"); `make gpu-check` builds for the local GPU only.
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extension():
    cpp = sources("csrc/*.cpp") + sources("csrc/common/*.cpp") + sources("csrc/cpu/*.cpp")
    cu = sources("csrc/cuda/*.cu")
    # -fno-trapping-math lets GCC if-convert the branch-free vector math (csrc/cpu/vec_math.h);
    # it changes no result (NaN and Inf propagate as before), only FP-exception flag timing.
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math"]
    link_flags = ["-fopenmp"]
    with_cuda = bool(cu) and torch.version.cuda is not None and CUDA_HOME is not None
    if os.environ.get("INVFLOW_NO_CUDA"):
        with_cuda = False
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;9.0+PTX")
        return CUDAExtension(
            "invflow._C",
            cpp + cu,
            define_macros=[("INVFLOW_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=link_flags,
        )
    return CppExtension("invflow._C", cpp, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)


# INVFLOW_SKIP_EXT=1: install the Python packages only; the Makefile then compiles the
# extension once with the incremental `setup.py build_ext --inplace` (ninja keeps its
# objects in build/, so later rebuilds recompile only what changed).
setup(
    ext_modules=[] if os.environ.get("INVFLOW_SKIP_EXT") else [extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
