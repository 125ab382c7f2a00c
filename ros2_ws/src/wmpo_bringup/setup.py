"""wmpo_bringup: installs launch/*.launch.py and launch/config/*.yaml into the share dir,
and the wmpo node console scripts into lib/wmpo_bringup/ (where launch_ros looks).

`launch` here is a symlink to the repository's launch/ directory: one copy of the
launch files and parameters. The node code itself is the `wmpo` Python package,
installed into the robot's Python environment (docs/runtime.md).
"""

import re
from glob import glob
from pathlib import Path

from setuptools import setup

PACKAGE = "wmpo_bringup"
HERE = Path(__file__).resolve().parent


def node_scripts() -> list[str]:
    """The wmpo_*_node console scripts, read from the repository's pyproject.toml."""
    pyproject = (HERE / "launch").resolve().parent / "pyproject.toml"
    text = pyproject.read_text()
    return [
        f"{name} = {target}"
        for name, target in re.findall(r'^(wmpo_\w+_node)\s*=\s*"([\w.:]+)"', text, re.M)
    ]


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.py"))),
        (f"share/{PACKAGE}/launch/config", sorted(glob("launch/config/*.yaml"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="wmpo maintainers",
    maintainer_email="maintainers@wmpo.dev",
    description="Launch files and parameters for the wmpo robot runtime.",
    license="Apache-2.0",
    entry_points={"console_scripts": node_scripts()},
)
