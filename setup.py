"""Package layout that pyproject.toml alone cannot state: the top-level ``configs/`` folder ships as
``lit_bar/configs`` (package data), so an installed lit-bar finds its YAML files without a checkout
(``lit_bar.cli.configs_dir``). The files stay where they are in the repository; nothing is copied."""

from setuptools import find_namespace_packages, find_packages, setup

CONFIGS = [
    "lit_bar.configs",
    *(f"lit_bar.configs.{name}" for name in find_namespace_packages(where="configs")),
]

setup(
    packages=[*find_packages(include=["lit_bar", "lit_bar.*"]), *CONFIGS],
    package_dir={"lit_bar.configs": "configs"},
    package_data={name: ["*.yaml"] for name in CONFIGS},
)
