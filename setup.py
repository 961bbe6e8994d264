"""The package list: everything under src/ plus refedit.conf, the top-level conf/ (pyproject.toml maps it)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages("src"), "refedit.conf"])
