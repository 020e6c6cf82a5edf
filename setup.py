"""Builds the C++ preprocessing extension. Project metadata and dependencies
live in pyproject.toml."""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

preprocess = Pybind11Extension(
    "wbc_edge._preprocess",
    sources=["csrc/module.cpp", "csrc/resample.cpp", "csrc/resample_portable.cpp", "csrc/resample_avx2.cpp",
             "csrc/cell_box.cpp"],
    include_dirs=["csrc"],
    cxx_std=17,
    # Exact floating point: the filter weights must match Pillow's bit for bit.
    extra_compile_args=["-O3", "-fno-fast-math", "-ffp-contract=off"],
)

setup(
    packages=find_packages(include=["wbc_edge", "wbc_edge.*"]),
    package_data={"wbc_edge.models": ["*.onnx", "*.json", "*.md", "reference_cells/*"],
                  "wbc_edge.review_page": ["static/*.html", "static/*.js", "static/*.css"]},
    ext_modules=[preprocess],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
