"""Data-parallel training on MLX's distributed runtime: two ranks on 127.0.0.1 (ring backend)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import distributed as dist
from core import runs

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "resources" / "demo" / "model"
DEMO_DATA = ROOT / "resources" / "demo" / "data"
TUNELOOM = [sys.executable, "-m", "app.cli"]


# ---------------------------------------------------------------------------
# Host files and checks (no processes)
# ---------------------------------------------------------------------------

def test_hostfile_text_and_json(tmp_path):
    p = tmp_path / "hosts.txt"
    p.write_text("# this Mac first\n127.0.0.1\nlocalhost 127.0.0.1  # the same Mac again\n")
    hosts = dist.read_hostfile(p)
    assert [h.ssh for h in hosts] == ["127.0.0.1", "localhost"]
    assert all(h.local and h.ips == ["127.0.0.1"] for h in hosts)

    j = tmp_path / "hosts.json"
    j.write_text(json.dumps([{"ssh": "mini.local", "ips": ["10.0.0.2"]}, {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]))
    hosts = dist.read_hostfile(j)
    assert hosts[0].ssh == "mini.local" and hosts[0].ips == ["10.0.0.2"] and not hosts[0].local
    written = json.loads(dist.write_mlx_hostfile(hosts, tmp_path / "mlx.json").read_text())
    assert written["hosts"][0] == {"ssh": "mini.local", "ips": ["10.0.0.2"]} and written["backend"] == "ring"


def test_this_mac_gets_an_address_the_others_reach(tmp_path, monkeypatch):
    # with a remote Mac in the group, rank 0 must not be 127.0.0.1 (the remote would dial itself)
    monkeypatch.setattr(dist, "_outbound_ip", lambda target: "10.0.0.1" if target == "10.0.0.2" else None)
    p = tmp_path / "hosts.txt"
    p.write_text("localhost\nmini.local 10.0.0.2\n")
    hosts = dist.read_hostfile(p)
    assert hosts[0].ips == ["10.0.0.1"] and hosts[1].ips == ["10.0.0.2"]
    written = json.loads(dist.write_mlx_hostfile(hosts, tmp_path / "mlx.json").read_text())["hosts"]
    assert written[0] == {"ssh": "127.0.0.1", "ips": ["10.0.0.1"]}  # run here, reached at 10.0.0.1
    p.write_text("localhost\nother.local 10.9.9.9\n")
    with pytest.raises(dist.GroupError) as e:
        dist.read_hostfile(p)
    assert "localhost 10.0.0.1" in str(e.value.hint)


@pytest.mark.parametrize("text, words", [
    ("", "lists no hosts"),
    ("127.0.0.1\n", "a group needs two or more"),
    ("127.0.0.1\na b c\n", "line 2"),
    ('[{"ips": ["1.2.3.4"]}, {"ssh": "x"}]', "host 1 needs an \"ssh\" name"),
    ("[1, 2", "not valid JSON"),
])
def test_hostfile_problems_are_explained(tmp_path, text, words):
    p = tmp_path / "hosts"
    p.write_text(text)
    with pytest.raises(dist.GroupError) as e:
        dist.read_hostfile(p)
    assert words in str(e.value)


def test_check_hosts_explains_each_problem(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    hosts = [dist.Host("127.0.0.1", ["127.0.0.1"]), dist.Host("down.local", ["10.9.9.9"]),
             dist.Host("old.local", ["10.9.9.8"]), dist.Host("bare.local", ["10.9.9.7"]),
             dist.Host("good.local", ["10.9.9.6"])]
    mine = dist.local_versions()

    def runner(host, command, timeout):
        assert "BatchMode" not in command  # the probe itself; ssh options are the runner's business
        if host.ssh == "down.local":
            return subprocess.CompletedProcess([], 255, "", "ssh: connect to host down.local port 22: timed out")
        versions = dict(mine, mlx="0.0.1") if host.ssh == "old.local" else mine
        missing = [str(model.resolve())] if host.ssh == "bare.local" else []
        return subprocess.CompletedProcess([], 0, json.dumps({"versions": versions, "missing": missing}), "")

    checks = dist.check_hosts(hosts, [model], runner=runner)
    by = {c.host.ssh: c for c in checks}
    assert by["127.0.0.1"].ok and by["good.local"].ok
    assert not by["down.local"].ok and "cannot be reached" in by["down.local"].problem
    assert "ssh down.local" in by["down.local"].hint
    assert not by["old.local"].ok and "mlx 0.0.1" in by["old.local"].problem
    assert not by["bare.local"].ok and by["bare.local"].missing == [str(model.resolve())]
    assert "rsync -a" in by["bare.local"].hint and "bare.local:" in by["bare.local"].hint
    assert by["down.local"].line().startswith("rank 1 (down.local): cannot be reached")


def test_batch_is_sharded_without_overlap():
    members = [7, 3, 9, 1, 4]
    parts = [dist.shard(members, dist.Group(rank=r, size=2)) for r in range(2)]
    assert parts == [[7, 9, 4], [3, 1]]
    assert sorted(parts[0] + parts[1]) == sorted(members)


# ---------------------------------------------------------------------------
# Two ranks on this machine
# ---------------------------------------------------------------------------

def _env(tmp_path):
    return {**os.environ, "TUNELOOM_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}


def _hostfile(tmp_path) -> Path:
    p = tmp_path / "hosts.txt"
    p.write_text("127.0.0.1\n127.0.0.1\n")
    return p


TRAIN = ["--model", str(DEMO_MODEL), "--data", str(DEMO_DATA), "--batch", "4", "--valid-every", "2",
         "--valid-batches", "2", "--checkpoint-every", "2", "--seed", "3"]


def _losses(run_dir: Path, name: str) -> dict[int, float]:
    return dict(zip(*runs.series(runs.read_metrics(run_dir), name)))


@pytest.mark.timeout(900)
def test_two_ranks_give_the_single_process_curve(tmp_path):
    env = _env(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = subprocess.run([*TUNELOOM, "train", *TRAIN, "--iters", "4", "--out", str(one)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = subprocess.run([*TUNELOOM, "train", "--hosts", str(_hostfile(tmp_path)), *TRAIN, "--iters", "4", "--out",
                         str(two)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, (r2.stdout + r2.stderr)[-3000:]
    assert "training on 2 Macs" in r2.stderr
    final = json.loads(r2.stdout.strip().splitlines()[-1])
    assert final["state"] == "done" and final["hosts"] == 2  # rank 0's result line, once
    assert r2.stdout.count('"state": "done"') == 1

    for name in ("train_loss", "valid_loss"):
        a, b = _losses(one, name), _losses(two, name)
        assert sorted(a) == sorted(b) and a, name
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=1e-4), (name, step)
    assert _losses(one, "trained_tokens") == _losses(two, "trained_tokens")

    # a group run's folder is an ordinary run: history lists it, and it exports like any other
    listed = {i.path.resolve(): i for i in runs.list_runs(tmp_path / "home" / "runs")}  # --out folders are remembered
    assert two.resolve() in listed and listed[two.resolve()].state == "done"
    assert (two / "adapters.safetensors").exists()
    assert not list(two.glob("*.part")) and not list((two / "checkpoints").glob(".*.part"))
    from core.export.pipeline import export

    res = export(two, gguf=tmp_path / "two.gguf", quant="f16")
    assert Path(res["gguf"]).stat().st_size > 0 and Path(res["modelfile"]).exists()


def _rank_pid(run_dir: Path, rank: int) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            envs = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(run_dir).encode() in cmd and b"app.cli" in cmd and f"MLX_RANK={rank}".encode() in envs:
            return int(d.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
@pytest.mark.timeout(900)
def test_killed_rank_stops_the_group_and_the_run_resumes(tmp_path):
    env = _env(tmp_path)
    hosts = _hostfile(tmp_path)
    run = tmp_path / "run"
    p = subprocess.Popen([*TUNELOOM, "train", "--hosts", str(hosts), *TRAIN, "--iters", "16", "--out", str(run)],
                         env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 500
        while time.time() < deadline and p.poll() is None:
            if runs.latest_checkpoint(run) is not None and max(_losses(run, "train_loss") or [0]) >= 3:
                break
            time.sleep(0.2)
        assert p.poll() is None, "the group ended before a rank could be killed: " + p.stderr.read()[-2000:]
        pid = _rank_pid(run, 1)
        assert pid, "rank 1's process not found"
        os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1, err[-2000:]
    assert "Rank 1 on 127.0.0.1" in err
    if (runs.read_json(run / "status.json") or {}).get("state") == "done":
        # Under load the kill can still come after rank 0 finished the run: then it says so
        assert "nothing to resume" in err and "resume it with" not in err
    else:
        assert "resume it with" in err and f"--resume {run}" in err
        ck = runs.latest_checkpoint(run)
        assert ck is not None
        done_before = json.loads((ck / "state.json").read_text())["step"]
        assert 2 <= done_before < 16

    r = subprocess.run([*TUNELOOM, "train", "--resume", str(run), "--hosts", str(hosts)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    steps = [m["step"] for m in runs.read_metrics(run) if "train_loss" in m]
    assert steps == list(range(1, 17))  # one continuous curve: no gap, no duplicate step
    assert runs.read_json(run / "status.json")["state"] == "done"


@pytest.mark.timeout(900)
def test_resuming_a_finished_group_run_says_so_on_every_rank(tmp_path):
    """Seen under load: a rank killed after the group's last step left a finished run whose resume went
    wrong. Rank 0 said "finished" and returned, the other rank went on to restore a checkpoint and lost
    its peer (exit 1). Every rank must learn that the run is finished."""
    env = _env(tmp_path)
    hosts = _hostfile(tmp_path)
    run = tmp_path / "run"
    p = subprocess.run([*TUNELOOM, "train", "--hosts", str(hosts), *TRAIN, "--iters", "2", "--out", str(run)],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    r = subprocess.run([*TUNELOOM, "train", "--resume", str(run), "--hosts", str(hosts)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out = r.stdout + r.stderr
    assert "is finished" in out and "connection to a peer was lost" not in out and "Traceback" not in out
    assert [m["step"] for m in runs.read_metrics(run) if "train_loss" in m] == [1, 2]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
@pytest.mark.timeout(600)
def test_killing_the_launcher_leaves_no_rank_behind(tmp_path):
    env = _env(tmp_path)
    run = tmp_path / "run"
    p = subprocess.Popen([*TUNELOOM, "train", "--hosts", str(_hostfile(tmp_path)), *TRAIN, "--iters", "200",
                          "--out", str(run)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (_rank_pid(run, 0) and _rank_pid(run, 1)):
            time.sleep(0.2)
        assert _rank_pid(run, 0) and _rank_pid(run, 1), "the ranks did not start"
    finally:
        p.kill()  # as a crash or a force-quit would: no chance to clean up
        p.wait()
    deadline = time.time() + 30
    while time.time() < deadline and (_rank_pid(run, 0) or _rank_pid(run, 1)):
        time.sleep(0.5)
    assert not _rank_pid(run, 0) and not _rank_pid(run, 1), "a rank outlived its launcher"


def test_free_ports_lie_below_the_ephemeral_range(monkeypatch):
    """Found free, bound by the ranks seconds later: below the range outgoing connections take their
    ports from, only another listener could take them meanwhile (the window is used only where it lies
    outside that range)."""
    import socket

    lo, hi = dist.PORT_WINDOW
    for _ in range(5):
        base = dist.free_port(3)
        assert lo <= base < hi
        for k in range(3):
            with socket.socket() as s:
                s.bind(("127.0.0.1", base + k))
    monkeypatch.setattr(dist, "_ephemeral_range", lambda: (lo - 100, hi + 100))  # the window inside it
    base = dist.free_port(3)
    assert not lo <= base < hi or base == dist.DEFAULT_PORT
