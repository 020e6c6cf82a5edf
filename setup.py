"""Builds the C++ preprocessing extension and maps the pipeline folders into
the ``wbc_edge`` namespace (``export/`` -> ``wbc_edge.export`` and so on).
Project metadata and dependencies live in pyproject.toml."""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

# Folders at the top of the repository that ship inside wbc_edge.
PIPELINE_PACKAGES = {
    "wbc_edge.export": "export",
    "wbc_edge.calibration": "calibration",
    "wbc_edge.training": "training",
}

preprocess = Pybind11Extension(
    "wbc_edge._preprocess",
    sources=["csrc/module.cpp", "csrc/resample.cpp", "csrc/cell_box.cpp"],
    include_dirs=["csrc"],
    cxx_std=17,
    # Exact floating point: the filter weights must match Pillow's bit for bit.
    extra_compile_args=["-O3", "-fno-fast-math", "-ffp-contract=off"],
)

setup(
    packages=["wbc_edge", "wbc_edge.backends", "wbc_edge.cli", "wbc_edge.models", "wbc_edge.review_page",
              *PIPELINE_PACKAGES],
    package_dir=PIPELINE_PACKAGES,
    package_data={"wbc_edge.models": ["*.onnx", "*.json", "*.md", "reference_cells/*"],
                  "wbc_edge.review_page": ["static/*.html", "static/*.js", "static/*.css"]},
    ext_modules=[preprocess],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
