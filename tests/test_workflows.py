"""The GitHub workflows are valid YAML, have the jobs and steps the packaging issue asks for, keep
no secrets, and their shell steps parse; what they grep for is what the app really writes."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
WF = ROOT / ".github" / "workflows"


def load(name):
    text = (WF / name).read_text()
    data = yaml.safe_load(text)
    assert isinstance(data, dict), name
    # YAML 1.1 reads the bare key `on` as True
    data["on"] = data.pop("on", None) or data.pop(True, None)
    return text, data


def steps_of(data, job=None):
    jobs = data["jobs"]
    job = job or next(iter(jobs))
    return jobs[job]["steps"]


def runs(steps) -> str:
    return "\n".join(s.get("run", "") for s in steps)


@pytest.mark.parametrize("name", ["linux.yml", "macos.yml"])
def test_workflow_is_valid_yaml_with_triggers_and_pinned_actions(name):
    text, data = load(name)
    assert data["name"]
    assert {"push", "pull_request"} <= set(data["on"])
    assert data["permissions"] == {"contents": "read"}
    assert "secrets." not in text, "no secrets in the repo's workflows"
    assert len(data["jobs"]) == 1
    for job in data["jobs"].values():
        assert job["runs-on"] and job["timeout-minutes"] > 0 and job["steps"]
        for step in job["steps"]:
            assert set(step) & {"uses", "run"}, step
            assert step.get("name"), step
            if "uses" in step:
                # pinned to a commit (a tag can be moved to other code), the version it is in a comment
                assert re.fullmatch(r"actions/[\w-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
                line = next(x for x in text.splitlines() if f"uses: {step['uses']}" in x)
                assert re.search(r"@[0-9a-f]{40}  # v\d+\.\d+\.\d+$", line), line
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, "no token left in .git/config"


def _zizmor() -> str | None:
    here = Path(sys.executable).parent / "zizmor"  # the venv's, installed by the test extra
    return str(here) if here.exists() else shutil.which("zizmor")


def test_zizmor_finds_nothing_in_the_workflows(tmp_path):
    """zizmor (the GitHub Actions linter, from PyPI) in offline mode: no unpinned actions, no
    persisted credentials, no template injection, no excessive permissions."""
    exe = _zizmor()
    assert exe, "zizmor is not installed: it comes with the test extra (./dev setup installs it)"
    proc = subprocess.run([exe, "--offline", "--no-progress", str(WF)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings to report" in proc.stdout + proc.stderr
    # and it does look: the same workflow unpinned, with the checkout's credentials kept, is flagged
    bad = tmp_path / "workflows"
    bad.mkdir()
    text = (WF / "linux.yml").read_text()
    text = re.sub(r"actions/checkout@[0-9a-f]{40}.*\n\s+with:\n\s+persist-credentials: false.*\n",
                  "actions/checkout@v4\n", text)
    assert "actions/checkout@v4\n" in text
    (bad / "linux.yml").write_text(text)
    proc = subprocess.run([exe, "--offline", "--no-progress", str(bad / "linux.yml")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "unpinned-uses" in proc.stdout + proc.stderr and "artipacked" in proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("name", ["linux.yml", "macos.yml"])
def test_every_run_step_is_valid_bash(name):
    _, data = load(name)
    for step in steps_of(data):
        if "run" in step:
            proc = subprocess.run(["bash", "-n"], input=step["run"], text=True, capture_output=True)
            assert proc.returncode == 0, f"{step['name']}: {proc.stderr}"


def test_linux_workflow_does_what_ci_run_does():
    _, data = load("linux.yml")
    job = data["jobs"]["test"]
    assert job["runs-on"].startswith("ubuntu-")
    steps = job["steps"]
    assert steps[0]["uses"].startswith("actions/checkout@")
    assert any(s.get("uses", "").startswith("actions/setup-python@") for s in steps)
    assert re.search(r"(^|\s)(bash )?\.ci/run\b", runs(steps), re.M)
    # and .ci/run is the whole suite (the bundle test included), through ./dev
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev test" in ci


def test_macos_workflow_builds_signs_smoke_tests_and_uploads_the_app():
    text, data = load("macos.yml")
    job = data["jobs"]["app"]
    m = re.fullmatch(r"macos-(\d+)(-xlarge)?", job["runs-on"])
    assert m and int(m.group(1)) >= 14, "an Apple-silicon runner: macos-14 or later"
    steps = job["steps"]
    names = [s["name"] for s in steps]
    script = runs(steps)
    order = [
        ("install", r"\./dev setup"),
        ("build", r"-m PyInstaller .*build_macos\.spec|PyInstaller[^\n]*\n[^\n]*build_macos\.spec"),
        ("ad-hoc sign", r"codesign --force --deep -s - dist/Tuneloom\.app"),
        ("tests", r"\./dev test"),
        ("bundled demo", r"Tuneloom\.app/Contents/MacOS/Tuneloom demo"),
        ("open after paint", r"open -W [^\n]*Tuneloom\.app[^\n]*--args --quit-after-paint"),
        ("zip", r"ditto -c -k [^\n]*--keepParent dist/Tuneloom\.app dist/Tuneloom-macos-arm64\.zip"),
        ("dmg", r"hdiutil create [^\n]*-format UDZO dist/Tuneloom-macos-arm64\.dmg"),
    ]
    positions = []
    for what, pattern in order:
        hit = re.search(pattern, script)
        assert hit, f"macos.yml lacks the {what} step ({pattern})"
        positions.append(hit.start())
    assert positions == sorted(positions), "install, build, sign, test, smoke-test, package: in that order"
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert {u["with"]["path"] for u in uploads} == {"dist/Tuneloom-macos-arm64.zip", "dist/Tuneloom-macos-arm64.dmg"}
    assert all(u["with"].get("if-no-files-found") == "error" for u in uploads)
    # the bundle test in the suite runs against the signed app instead of building another one
    test_step = steps[names.index(next(n for n in names if n.startswith("Tests")))]
    assert "TUNELOOM_BUNDLE_DIST" in test_step["env"]
    assert "TUNELOOM_BUNDLE_DIST" in (ROOT / "tests" / "test_bundle.py").read_text()


def test_what_the_workflow_checks_is_what_the_app_writes():
    text, _ = load("macos.yml")
    # the smoke test greps the log for the line the quit-after-paint hook logs, in the log folder app.logs uses
    assert 'grep -q "quit-after-paint: first paint" "$logs/tuneloom.log"' in text
    assert 'logs="$HOME/Library/Logs/Tuneloom"' in text
    assert "quit-after-paint: first paint" in (ROOT / "app" / "gui" / "main.py").read_text()
    from app import logs

    assert logs.LOG_NAME == "tuneloom.log"
    # the plist values it asserts are the spec's
    spec = (ROOT / "build_macos.spec").read_text()
    assert 'BUNDLE_ID = "app.tuneloom.Tuneloom"' in spec and "= app.tuneloom.Tuneloom" in text
    assert '"LSMinimumSystemVersion": "14.0"' in spec and "= 14.0" in text
