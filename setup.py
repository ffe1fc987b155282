"""Builds the optional fused CPU kernels of the losses (labelset_jax/losses/_cpu_kernels.cc).

Everything else is declared in pyproject.toml. The kernels are an XLA FFI custom call: they compile
against the FFI headers shipped in the jaxlib wheel (a build requirement) and need a C++17
compiler. The extension is optional: when it cannot be built, the package installs without it and
the losses use their pure-JAX path (same values, slower on CPU).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildFfiKernels(build_ext):
    """Adds jaxlib's FFI include directory; the library is loaded with ctypes, not imported."""

    def build_extensions(self):
        import jaxlib

        include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
        for ext in self.extensions:
            ext.include_dirs.append(include)
        super().build_extensions()

    def get_export_symbols(self, ext):
        return []  # a plain shared library: no PyInit_ symbol to export


setup(
    ext_modules=[
        Extension(
            "labelset_jax.losses._cpu_kernels",
            sources=["labelset_jax/losses/_cpu_kernels.cc"],
            depends=["labelset_jax/losses/_cpu_kernels_isa.inc"],
            language="c++",
            extra_compile_args=["-std=c++17", "-O3", "-Wno-psabi"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildFfiKernels},
)
