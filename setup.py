"""Package discovery (the rest of the metadata is in pyproject.toml): acdc_lite and all its subpackages, found
automatically, plus the top-level `tasks/` directory installed as `acdc_lite.tasks`."""

from setuptools import find_packages, setup

tasks = ["acdc_lite." + p for p in find_packages(include=["tasks", "tasks.*"])]
setup(packages=find_packages(include=["acdc_lite", "acdc_lite.*"]) + tasks, package_dir={"acdc_lite.tasks": "tasks"})
