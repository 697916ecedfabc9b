"""Packaging beyond what pyproject.toml can declare: the built-in search spaces
(``search_spaces/``) and the example pipelines (``experiments/``) stay at the top of the
repository and ship inside the package as ``safs/_spaces`` and ``safs/_experiments``
(read through ``safs.resources``)."""

from setuptools import find_namespace_packages, find_packages, setup

DATA = {"safs._spaces": "search_spaces", "safs._experiments": "experiments"}
# Each data directory and its subdirectories, as the (namespace) packages that hold the files.
data_packages = [f"{pkg}.{sub}" if sub else pkg for pkg, top in DATA.items()
                 for sub in ["", *find_namespace_packages(where=top)]]

setup(
    packages=find_packages(include=["safs", "safs.*"]) + data_packages,
    package_dir=DATA,
    package_data={pkg: ["*.yaml"] for pkg in data_packages},
)
