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
    "vae.present.figure_files": "imports torch and vl-convert, for `figures` only",
    "vae.execution.export": "imports torch, for `export` only",
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


def app_sources() -> dict[str, ast.AST]:
    """Every module of the library, the pages and the Streamlit glue, by a readable name."""
    paths = [*(ROOT / "vae").rglob("*.py"), *(ROOT / "pages").glob("*.py")]
    paths += [ROOT / "ui.py", ROOT / "app.py"]
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text()) for p in paths}


def test_no_backend_is_named_outside_the_module_that_chooses_one():
    """Pages, the CLI and the manager ask the Backend protocol (cluster, threads_per_job,
    capacity, resources); only vae/execution/backends.py turns a name into a backend."""
    names = {"ray", "local"}

    def named(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return any(named(e) for e in node.elts)
        return False

    offenders = [
        f"{path}:{node.lineno}"
        for path, tree in app_sources().items()
        if path != "vae/execution/backends.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare) and any(named(n) for n in [node.left, *node.comparators])
    ]
    assert offenders == []


# Writers of files in the store that are not a run's data, each with its reason.
STORE_WRITERS = {
    "vae/execution/files.py": "the primitives every write goes through",
    "vae/execution/run_folder.py": "the run folders: every run file is written here",
    "vae/execution/listing.py": "the listing's own .index.json (a cache, through files.py)",
    "vae/execution/layout.py": "the store root's .layout.json (through files.py)",
    "vae/execution/lease.py": "a run's lease: an OS lock and a heartbeat, no data",
    "vae/execution/ray_backend.py": "removes its node-local temporary store when a job ends",
    "vae/present/figure_files.py": "figures into the folder the user names (--out), not a run's",
    "vae/execution/export.py": "model files into the folder the user names (--out), not a run's",
    "vae/execution/root_files.py": "the store root's own small files (.changes, locks, .worker.log)",
    "vae/present/upload.py": "removes an upload's temporary file once it is inspected",
    "ui.py": "removes an upload's temporary file when the user clears it",
    "vae/execution/procs.py": "its own session's nice (/proc/self/autogroup), not a file at all",
}
WRITE_CALLS = {  # by any name: the store's primitives and pathlib's writers
    "atomic_write_bytes", "atomic_write_json", "overwrite_in_place", "append_bytes", "touch",
    "write_bytes", "write_text", "unlink",
}  # fmt: skip
OS_WRITE_CALLS = {"replace", "rename", "remove", "unlink", "utime", "rmtree", "move", "copy"}


def writes_a_file(node: ast.AST) -> bool:
    """Whether a call writes, moves or removes a file (os.open for writing, open(..., "w")...)."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
    if name in WRITE_CALLS or (owner in ("os", "shutil") and name in OS_WRITE_CALLS):
        return True
    if name == "save" and owner == "torch":  # a path target writes a file, a buffer does not
        return len(node.args) > 1 and isinstance(node.args[1], ast.Constant | ast.BinOp)
    if name == "open" and owner == "os":
        flags = ast.unparse(node.args[1]) if len(node.args) > 1 else ""
        return any(f in flags for f in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND"))
    if name == "open":
        modes = [*node.args[1:2], *(k.value for k in node.keywords if k.arg == "mode")]
        mode = modes[0].value if modes and isinstance(modes[0], ast.Constant) else "r"
        return any(c in str(mode) for c in "wax+")
    return False


def test_no_module_writes_a_runs_files_except_through_the_store():
    """A run's files are written by vae/execution/run_folder.py (through files.py) alone, so its
    summary, change signal and atomic writes stay right; everything else asks the RunStore."""
    offenders = [
        f"{path}:{node.lineno}: {ast.unparse(node)[:80]}"
        for path, tree in app_sources().items()
        if path not in STORE_WRITERS
        for node in ast.walk(tree)
        if writes_a_file(node)
    ]
    assert offenders == []


def test_every_store_writer_is_still_one():
    """The exceptions above are real (a stale one would hide a new writer of the same module)."""
    sources = app_sources()
    idle = [p for p in STORE_WRITERS if not any(writes_a_file(n) for n in ast.walk(sources[p]))]
    assert idle == []


def test_pages_draw_charts_one_way():
    """Through ui.chart (built once per distinct data); only a chart whose clicks select runs
    (the Tradeoff plane) is handed to Streamlit directly."""
    direct = {
        f"{p.relative_to(ROOT)}"
        for p in (ROOT / "pages").glob("*.py")
        for line in p.read_text().splitlines()
        if "st.altair_chart(" in line or "st.vega_lite_chart(" in line
    }
    assert direct <= {"pages/tradeoff.py"}
    assert "on_select=" in (ROOT / "pages" / "tradeoff.py").read_text()


def test_the_worker_writes_through_the_run_folders_and_never_reads_the_listing():
    """The listing is the server's read model; a training process only writes runs (and reads
    single files), so it never builds a cache it does not need."""
    listing_calls = ("list_runs", "get", "snapshot", "active_runs", "epoch_rows", "listing")
    for name in ("worker", "evaluation", "checkpoint", "cancel"):
        tree = ast.parse((ROOT / "vae" / "execution" / f"{name}.py").read_text())
        used = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "store"
        }
        assert not used & set(listing_calls), (name, used & set(listing_calls))
