"""Builds the native BaF kernels (csrc/) into baf._native; metadata lives in pyproject.toml."""
import os
from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

# BAF_DEBUG_BUILD=1 pip install -e . gives a build for gdb with assertions on.
DEBUG = os.environ.get("BAF_DEBUG_BUILD") == "1"
# -ffp-contract=off: no fused multiply-add, so native results equal the NumPy/torch ones bit for bit.
# -Wno-psabi: the vector types only cross inlined calls, never an ABI boundary.
FLAGS = ["-Wall", "-Wextra", "-Wno-psabi", "-ffp-contract=off", "-fno-math-errno"]
FLAGS += ["-O0", "-g", "-UNDEBUG"] if DEBUG else ["-O3", "-DNDEBUG"]

ParallelCompile("BAF_BUILD_JOBS").install()

setup(
    ext_modules=[
        Pybind11Extension(
            "baf._native",
            sorted(glob("csrc/*.cpp")),  # sorted: reproducible builds
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=FLAGS,
            extra_link_args=["-pthread"],
        )
    ],
    cmdclass={"build_ext": build_ext},
)
