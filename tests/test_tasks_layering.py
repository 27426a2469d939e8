"""Tasks sit below the engine: no module of atomica_ray/tasks imports atomica_ray.train (the engine asks tasks,
never the other way round), so the import graph has no circle tasks -> spec -> train.config -> tasks."""

from __future__ import annotations

import ast
from pathlib import Path

import atomica_ray.tasks

TASKS_DIR = Path(atomica_ray.tasks.__file__).parent


def train_imports(path: Path) -> list[str]:
    """`module line: statement` for every import of atomica_ray.train (absolute or relative) in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from ..train import x, from . import x (in atomica_ray/tasks)
                base = "atomica_ray" if node.level == 2 else "atomica_ray.tasks"
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        hits = [n for n in names if n == "atomica_ray.train" or n.startswith("atomica_ray.train.")]
        if hits:
            found.append((node.lineno, f"{path.name}:{node.lineno}: {hits[0]}"))
    return [text for _, text in sorted(found)]


def test_no_task_module_imports_the_engine():
    files = sorted(TASKS_DIR.glob("*.py"))
    assert len(files) >= 10  # the walk sees the task modules (spec, metrics, every task)
    offenders = [hit for f in files for hit in train_imports(f)]
    assert not offenders, f"tasks import the engine: {offenders}"


def test_the_check_catches_an_engine_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nif True:\n    from atomica_ray.train.config import TrainConfig\n"
                   "from ..train import loop\n")
    assert [h.split(": ")[1] for h in train_imports(bad)] == ["atomica_ray.train.config", "atomica_ray.train"]
