"""./dev's set-up: quiet (pip's output in a log shown only on failure), no second install for
`./dev run` after `./dev test`, and package metadata in today's packaging standard.

./dev runs in a scratch folder with a fake .venv whose python answers `-m pip` itself (and
passes everything else to the real interpreter), so nothing is installed and no network is used.
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "pip $*" >>"$(dirname "$0")/../pip-calls.log"
  echo "Collecting something (pip's own chatter)"
  echo "SetuptoolsDeprecationWarning: a wall of text" >&2
  exit "${FAKE_PIP_RC:-0}"
fi
if [ "$1" = "-m" ] && [ "$2" = "core.export.kquants_jit" ]; then
  echo "warm-up" >>"$(dirname "$0")/../warm-up.log"
  exit 0
fi
exec "%s" "$@"
"""


@pytest.fixture
def checkout(tmp_path):
    shutil.copy2(ROOT / "dev", tmp_path / "dev")
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(FAKE_PYTHON % sys.executable)
    (bin_dir / "tuneloom").write_text('#!/usr/bin/env bash\necho "tuneloom started $*"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return tmp_path


def dev(checkout, *args, pip_rc=0):
    env = {**os.environ, "TUNELOOM_NO_SYSTEM_PACKAGES": "1", "FAKE_PIP_RC": str(pip_rc)}
    return subprocess.run([str(checkout / "dev"), *args], cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=120)


def pyproject_hash(checkout):
    return hashlib.sha256((checkout / "pyproject.toml").read_bytes()).hexdigest()


def pip_calls(checkout):
    log = checkout / ".venv" / "pip-calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_first_setup_is_quiet_and_keeps_pips_output_in_a_log(checkout):
    p = dev(checkout, "setup")
    assert p.returncode == 0, p.stderr
    log = checkout / ".venv" / "setup.log"
    assert str(log) in p.stderr  # the path is printed...
    assert "chatter" not in p.stderr + p.stdout and "Deprecation" not in p.stderr + p.stdout  # ...not pip's output
    assert "chatter" in log.read_text() and "Deprecation" in log.read_text()
    assert any("-e .[test]" in c for c in pip_calls(checkout))
    assert (checkout / ".venv" / ".tuneloom-test").read_text().strip() == pyproject_hash(checkout)
    # the K-quant kernels are compiled at set-up, once, not by the first export
    assert (checkout / ".venv" / "warm-up.log").read_text().splitlines() == ["warm-up"]
    assert dev(checkout, "setup").returncode == 0
    assert (checkout / ".venv" / "warm-up.log").read_text().splitlines() == ["warm-up"]


def test_run_after_test_starts_at_once(checkout):
    assert dev(checkout, "setup").returncode == 0
    calls = len(pip_calls(checkout))
    p = dev(checkout, "run", "--flag")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "tuneloom started --flag"
    assert len(pip_calls(checkout)) == calls  # the test extra already holds everything run needs
    assert "Setting up" not in p.stderr


def test_run_alone_installs_only_what_it_needs_once(checkout):
    p = dev(checkout, "run")
    assert p.returncode == 0 and "tuneloom started" in p.stdout
    assert [c for c in pip_calls(checkout) if " -e " in c] == ["pip -m pip install -e .[verify]"]
    assert dev(checkout, "run").returncode == 0
    assert len([c for c in pip_calls(checkout) if " -e " in c]) == 1
    # ...and `./dev test` still needs its own extra
    assert dev(checkout, "setup").returncode == 0
    assert [c for c in pip_calls(checkout) if " -e " in c][-1] == "pip -m pip install -e .[test]"


def test_a_changed_pyproject_installs_again(checkout):
    assert dev(checkout, "setup").returncode == 0
    py = checkout / "pyproject.toml"
    py.write_text(py.read_text().replace('"numpy>=1.26"', '"numpy>=1.27"'))
    p = dev(checkout, "run")
    assert p.returncode == 0 and "Setting up" in p.stderr
    assert (checkout / ".venv" / ".tuneloom-verify").read_text().strip() == pyproject_hash(checkout)


def test_failed_setup_shows_the_log_and_leaves_no_stamp(checkout):
    p = dev(checkout, "run", pip_rc=1)
    assert p.returncode != 0
    assert "tuneloom started" not in p.stdout
    assert "Set-up failed" in p.stderr and str(checkout / ".venv" / "setup.log") in p.stderr
    assert "chatter" in p.stderr  # now pip's output matters
    assert not list((checkout / ".venv").glob(".tuneloom-*"))


def test_package_metadata_follows_current_packaging_standards():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression, not the deprecated table
    assert "License ::" not in " ".join(project.get("classifiers", []))  # superseded by the expression
    for pattern in project["license-files"]:
        files = list(ROOT.glob(pattern))
        assert files, pattern
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    setuptools_req = next(r for r in meta["build-system"]["requires"] if r.startswith("setuptools"))
    major = int(re.search(r">=\s*(\d+)", setuptools_req).group(1))
    assert major >= 77  # the first setuptools that reads license expressions and license-files
