"""Prints the pinned requirements a stand-in image needs, read from pyproject.toml (the one pin list).

    python scripts/compose/requirements.py tensorflow   # the tensorflow pin only
    python scripts/compose/requirements.py locust       # the `loadtest` extra
    python scripts/compose/requirements.py serving      # TF family + numpy from the core pins, + the `serve` extra

Why: the stand-ins must carry exactly the versions the repo pins, and whatever is added to an extra later.
"""

from __future__ import annotations

import pathlib
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"
TF_FAMILY = ("tensorflow", "tensorflow-text", "tensorflow-serving-api", "numpy")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirements(kind: str, project: dict) -> list[str]:
    core = project["dependencies"]
    extras = project.get("optional-dependencies", {})
    if kind == "tensorflow":
        return [r for r in core if _name(r) == "tensorflow"]
    if kind == "locust":
        return list(extras["loadtest"])
    if kind == "serving":
        return [r for r in core if _name(r) in TF_FAMILY] + list(extras.get("serve", []))
    if kind == "tensorboard":
        return list(extras["tensorboard"])
    raise SystemExit(f"unknown stand-in kind {kind!r}: tensorflow, locust, serving or tensorboard")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        raise SystemExit(__doc__)
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    found = requirements(argv[0], project)
    if not found:
        raise SystemExit(f"pyproject.toml pins nothing for the {argv[0]} stand-in")
    print("\n".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
