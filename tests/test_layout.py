"""The library's layout holds: learning code below execution code, no cycles, states named once."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import train_run

from vae.execution.store import RunStore
from vae.learn.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
# Imports allowed inside a function: only to defer a heavy third-party import, never for a cycle.
DEFERRED = {
    "vae.execution.ray_backend": "imports ray: about a second and 100 MB, only if chosen",
    # The CLI's --help and `list` start without torch or pandas (issue #21): only train, eval
    # and sweep load them.
    "vae.execution.worker": "imports torch, for `train` only",
    "vae.execution.evaluation": "imports torch, for `eval` only",
    "vae.present.views": "imports pandas, for `sweep` and `eval` only",
    "vae.learn.data": "imports torch and torchvision, only when a download is asked for",
}
LAYERS = {
    "vae.learn": 0,
    "vae.settings": 1,
    "vae.execution": 1,
    "vae.present": 2,
    "vae.cli": 3,
    "vae.__main__": 3,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def vae_imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vae"):
            found.append((node.module, node))
        elif isinstance(node, ast.Import):
            found += [(a.name, node) for a in node.names if a.name.startswith("vae")]
    return found


def layer(name: str) -> int:
    return next(v for k, v in LAYERS.items() if name == k or name.startswith(k + "."))


def library_modules() -> dict[str, ast.AST]:
    return {
        module_name(p): ast.parse(p.read_text())
        for p in (ROOT / "vae").rglob("*.py")
        if module_name(p) != "vae"
    }


def test_learning_code_never_imports_execution_or_presentation():
    for name, tree in library_modules().items():
        for target, _ in vae_imports(tree):
            if target == "vae":
                continue
            assert layer(target) <= layer(name), f"{name} imports {target} (a layer above it)"


def test_no_import_cycle_and_no_import_inside_a_function():
    modules = library_modules()
    graph = {
        name: {t for t, _ in vae_imports(tree) if t in modules} for name, tree in modules.items()
    }
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = [t for t, _ in vae_imports(node) if t not in DEFERRED]
                assert not inner, f"{name}.{node.name} imports {inner[0]} inside a function"

    def visit(name: str, path: list[str]) -> None:
        for target in graph[name]:
            assert target not in path, f"import cycle: {' -> '.join([*path, target])}"
            visit(target, [*path, target])

    for name in graph:
        visit(name, [name])


def test_run_state_names_are_written_only_where_they_are_defined():
    states = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
    pattern = re.compile("[\"'](" + "|".join(states) + ")[\"']")
    places = [*(ROOT / "vae").rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "ui.py"]
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in places
        if p.name != "states.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_one_optimizer_step_in_the_library():
    steps = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in (ROOT / "vae").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if ".step()" in line
    ]
    assert steps == ["vae/learn/engine.py:" + steps[0].split(":")[1]] and len(steps) == 1


FIRST_PAGE_PROBE = """
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app.py", default_timeout=60)
at.run()
if sys.argv[1] != "pages/train.py":
    at.switch_page(sys.argv[1]).run()
assert not at.exception, at.exception
print(sorted(name for name in ("torch", "altair") if name in sys.modules))
"""


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("first-page") / "runs")
    config = RunConfig(hidden_dims=[16], latent_dim=2, epochs=1, batch_size=512, threads=1)
    train_run(store, store.create_run(config))
    return store


@pytest.mark.parametrize(
    "page", ["pages/train.py", "pages/tradeoff.py", "pages/posterior.py", "pages/kl_term.py"]
)
def test_pages_that_show_no_model_open_without_loading_torch(one_run, page):
    """Importing torch takes seconds: a fresh server's first page must not wait for it (the
    pages that decode images load it in the background afterwards: ui.warm_up)."""
    env = {**os.environ, "VAE_STORE": str(one_run.root), "VAE_MAX_JOBS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_PAGE_PROBE, page],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = done.stdout.strip().splitlines()[-1]
    assert "torch" not in loaded
    if page == "pages/train.py":  # it draws no chart either
        assert "altair" not in loaded
