"""Packaging hook; the metadata is in pyproject.toml.

``models/`` and ``examples/images/`` are installed as the data packages ``onnx_xai.shipped`` and
``onnx_xai.shipped.images``. In a built wheel:

- their ``.py`` files (offline scripts that need torch: export / training of the shipped models)
  are left out, so that no ``onnx_xai.shipped.*`` module imports torch;
- each gets an empty ``__init__.py``, so that ``importlib.resources.files`` (``onnx_xai.assets``)
  returns their folder rather than a namespace package's ``MultiplexedPath``.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_PACKAGES = ("onnx_xai.shipped", "onnx_xai.shipped.images")


class _BuildPy(build_py):
    def find_package_modules(self, package, package_dir):
        if package in DATA_PACKAGES:
            return []
        return super().find_package_modules(package, package_dir)

    def _data_package_inits(self):
        if getattr(self, "editable_mode", False):  # editable installs read the source folders
            return []
        return [str(Path(self.build_lib, *p.split("."), "__init__.py")) for p in DATA_PACKAGES]

    def run(self):
        super().run()
        for init in self._data_package_inits():
            Path(init).parent.mkdir(parents=True, exist_ok=True)
            Path(init).write_text('"""Data shipped with onnx_xai; see onnx_xai.assets."""\n')

    def get_outputs(self, include_bytecode=True):
        return list(super().get_outputs(include_bytecode)) + self._data_package_inits()


setup(cmdclass={"build_py": _BuildPy})
