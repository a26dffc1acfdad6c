"""Data-parallel LoRA across several Macs, on MLX's own distributed runtime.

Two halves:

* Inside a training process (a *rank*): :func:`current_group` tells the trainer whether it was
  started by ``mlx.launch`` (``MLX_RANK`` / ``MLX_HOSTFILE`` in the environment) and gives it the
  few collective operations it needs (``all_sum``, broadcasting rank 0's state). A process started
  any other way is a group of one, and the trainer then runs exactly its single-machine code.
* Outside (the CLI or the GUI): :func:`read_hostfile`, :func:`check_hosts` and :func:`launch` start
  the group through ``mlx.launch`` (ring or MPI backend) after checking every host, and turn the
  way a group ends into a message that names the rank and the host.

Written here by hand only what MLX does not do: the checks before a launch (reachability, the same
Tuneloom and MLX versions, the model and data present) and the reading of ``mlx.launch``'s end.
The transport, the ring and the launch itself are MLX's.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from core.events import NULL_EVENTS, CancelToken, Events, TuneloomError

BACKENDS = ("ring", "mpi")
DEFAULT_PORT = 32323


class GroupError(TuneloomError):
    """A group run could not start, or one of its ranks stopped."""


# ---------------------------------------------------------------------------
# Inside a rank
# ---------------------------------------------------------------------------

@dataclass
class Group:
    """The training group this process belongs to (size 1 when not launched as a group)."""

    rank: int = 0
    size: int = 1
    handle: object | None = None  # mx.distributed.Group, when size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_sum(self, x):
        import mlx.core as mx

        if not self.distributed:
            return x
        return mx.distributed.all_sum(x, group=self.handle)

    def sum_floats(self, *values: float) -> list[float]:
        """Sum a few Python numbers over the ranks (float64 on the host side)."""
        import mlx.core as mx

        if not self.distributed:
            return [float(v) for v in values]
        out = self.all_sum(mx.array([float(v) for v in values], dtype=mx.float32))
        mx.eval(out)
        return [float(v) for v in out.tolist()]

    def broadcast_arrays(self, arrays: dict) -> dict:
        """Rank 0's values of ``arrays`` on every rank (same names and shapes on all ranks)."""
        import mlx.core as mx

        if not self.distributed:
            return arrays
        out = {}
        for k in sorted(arrays):  # the same order on every rank (a restored state's dict order differs)
            v = arrays[k]
            contrib = v if self.is_main else mx.zeros_like(v)
            out[k] = self.all_sum(contrib.astype(mx.float32)).astype(v.dtype) if v.dtype != mx.float32 \
                else self.all_sum(contrib)
        mx.eval(out)
        return out

    def broadcast_json(self, value):
        """Rank 0's JSON-able ``value`` on every rank (other ranks pass anything, e.g. None)."""
        import mlx.core as mx
        import numpy as np

        if not self.distributed:
            return value
        data = json.dumps(value).encode("utf-8") if self.is_main else b""
        n = int(self.sum_floats(len(data))[0])
        buf = np.zeros(n, dtype=np.float32)
        if self.is_main:
            buf[:] = np.frombuffer(data, dtype=np.uint8)
        total = self.all_sum(mx.array(buf))
        mx.eval(total)
        return json.loads(np.asarray(total).astype(np.uint8).tobytes().decode("utf-8"))


_GROUP: Group | None = None


def launched() -> bool:
    """Whether this process was started by ``mlx.launch`` as one rank of a group."""
    return "MLX_RANK" in os.environ and bool(os.environ.get("MLX_HOSTFILE") or os.environ.get("OMPI_COMM_WORLD_SIZE"))


def current_group() -> Group:
    """This process's group: initialised once from the environment ``mlx.launch`` sets."""
    global _GROUP
    if _GROUP is None:
        if not launched():
            _GROUP = Group()
        else:
            import mlx.core as mx

            backend = os.environ.get("TUNELOOM_DIST_BACKEND", "ring")
            try:
                g = mx.distributed.init(strict=True, backend=backend)
            except RuntimeError as exc:
                raise GroupError(f"This process was started as rank {os.environ.get('MLX_RANK')} of a group, "
                                 f"but MLX could not join it: {exc}",
                                 "Start group runs with `tuneloom train --hosts HOSTFILE`.") from exc
            _GROUP = Group(rank=g.rank(), size=g.size(), handle=g) if g.size() > 1 else Group()
            if _GROUP.distributed:
                _watch_parents()
    return _GROUP


def _watch_parents(interval: float = 1.0) -> None:
    """End this rank when the group around it is gone.

    A rank whose partner died waits in a collective forever, and one whose launcher was killed
    (a Ctrl-C'd or killed `tuneloom train --hosts`, a closed window) would train on unseen. So
    each rank leaves when its parent (mlx.launch, or the ssh session on a remote Mac) changes,
    or when the Tuneloom process that started the group, on this Mac, is gone."""
    parent = os.getppid()
    origin = os.environ.get("TUNELOOM_GROUP_PARENT", "")
    host, _, pid = origin.rpartition(":")
    starter = int(pid) if pid.isdigit() and host == socket.gethostname() else None

    from core.pids import pid_alive

    def alive(p: int) -> bool:
        return pid_alive(p, unsure=True)

    def watch():
        import time

        while True:
            time.sleep(interval)
            if os.getppid() != parent or (starter is not None and not alive(starter)):
                print(f"rank {os.environ.get('MLX_RANK')}: the group's launcher is gone; stopping", file=sys.stderr,
                      flush=True)
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="tuneloom-group-watch").start()


def shard(members: Sequence[int], group: Group) -> list[int]:
    """This rank's share of one global micro-batch (every rank gets at least one example)."""
    return list(members[group.rank::group.size])


# ---------------------------------------------------------------------------
# Outside: host files, checks, launch
# ---------------------------------------------------------------------------

@dataclass
class Host:
    ssh: str               # what ssh connects to ("mac-studio.local", "user@10.0.0.2", "127.0.0.1")
    ips: list[str] = field(default_factory=list)  # the addresses the ring talks over

    @property
    def address(self) -> str:
        return self.ips[0] if self.ips else self.ssh.rsplit("@", 1)[-1]

    @property
    def local(self) -> bool:
        name = self.ssh.rsplit("@", 1)[-1]
        if name in ("localhost", socket.gethostname()):
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


def _resolve_ip(name: str) -> str | None:
    try:
        return socket.gethostbyname(name.rsplit("@", 1)[-1])
    except OSError:
        return None


def read_hostfile(path: str | os.PathLike) -> list[Host]:
    """Hosts from ``mlx.launch``'s JSON host file, or from a text file with one host per line
    (``HOST`` or ``HOST IP``; ``#`` starts a comment). The first host is rank 0: this Mac."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise GroupError(f"Cannot read the host file {p}: {exc.strerror or exc}",
                         "Give a file with one host per line, this Mac first.") from exc
    hosts: list[Host] = []
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GroupError(f"{p.name}, line {exc.lineno}: not valid JSON ({exc.msg}).",
                             "Fix the file, or use one host per line instead.") from exc
        entries = data.get("hosts") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise GroupError(f"{p.name}: expected a list of hosts (or {{\"hosts\": [...]}}).")
        for i, h in enumerate(entries, 1):
            if isinstance(h, str):
                h = {"ssh": h}
            if not isinstance(h, dict) or not isinstance(h.get("ssh"), str) or not h["ssh"]:
                raise GroupError(f"{p.name}: host {i} needs an \"ssh\" name.",
                                 'Each host looks like {"ssh": "mac-mini.local", "ips": ["10.0.0.2"]}.')
            hosts.append(Host(h["ssh"], [str(x) for x in h.get("ips") or []]))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) > 2:
                raise GroupError(f"{p.name}, line {n}: expected `HOST` or `HOST IP`, found {line!r}.")
            hosts.append(Host(parts[0], parts[1:]))
    if not hosts:
        raise GroupError(f"{p.name} lists no hosts.", "Put one host per line, this Mac first.")
    if len(hosts) < 2:
        raise GroupError(f"{p.name} lists one host; a group needs two or more.",
                         "Add the other Macs, or train without --hosts.")
    for h in hosts:  # the ring needs addresses, not names
        if not h.ips and not h.local:
            ip = _resolve_ip(h.ssh)
            if ip is None:
                raise GroupError(f"Cannot find the address of {h.ssh}.",
                                 f"Check the name, or write its IP address after it: `{h.ssh} 10.0.0.2`.")
            h.ips = [ip]
    remote = [h for h in hosts if not h.local]
    for h in hosts:
        if not h.local:
            continue
        if not remote:  # all ranks on this Mac
            h.ips = h.ips or ["127.0.0.1"]
            continue
        # the other Macs must reach this one: the address of the interface that leads to them
        if not h.ips or any(_is_loopback(ip) for ip in h.ips):
            ip = _outbound_ip(remote[0].address)
            if ip is None:
                raise GroupError(f"Cannot tell which address of this Mac ({h.ssh}) the others reach.",
                                 f"Write it after the name: `{h.ssh} 10.0.0.1` (the Thunderbolt bridge's or "
                                 "Ethernet's address, from System Settings > Network).")
            h.ips = [ip]
    return hosts


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _outbound_ip(target: str) -> str | None:
    """The local address the route to ``target`` leaves from (a UDP 'connect' sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if _is_loopback(ip) else ip


def write_mlx_hostfile(hosts: Sequence[Host], path: Path, backend: str = "ring") -> Path:
    # mlx.launch runs a rank in place only when its ssh name is literally 127.0.0.1 (else over ssh)
    data = {"backend": backend, "hosts": [{"ssh": "127.0.0.1" if h.local else h.ssh, "ips": h.ips} for h in hosts]}
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


@dataclass
class HostCheck:
    host: Host
    rank: int
    ok: bool
    problem: str = ""
    hint: str = ""
    versions: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # model/data paths the host lacks

    def line(self) -> str:
        where = f"rank {self.rank} ({self.host.ssh})"
        return f"{where}: ok" if self.ok else f"{where}: {self.problem}" + (f" {self.hint}" if self.hint else "")


def local_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("tuneloom", "mlx", "mlx-lm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


_PROBE = ("import json, os, sys\n"
          "from importlib.metadata import version\n"
          "v = {}\n"
          "for n in ('tuneloom', 'mlx', 'mlx-lm'):\n"
          "    try: v[n] = version(n)\n"
          "    except Exception: v[n] = None\n"
          "print(json.dumps({'versions': v, 'missing': [p for p in sys.argv[1:] if not os.path.exists(p)]}))\n")


def _ssh(host: Host, command: str, timeout: float) -> subprocess.CompletedProcess:
    # "--": a host name from the host file is never read as an ssh option (a line starting with -o)
    return subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(timeout))}", "--",
                           host.ssh, command], capture_output=True, text=True, timeout=timeout + 10)


def check_hosts(hosts: Sequence[Host], paths: Sequence[str | os.PathLike], *, python: str | None = None,
                timeout: float = 5.0, runner: Callable[[Host, str, float], subprocess.CompletedProcess] | None = None
                ) -> list[HostCheck]:
    """Check every host before a launch: reachable over ssh, the same Tuneloom / MLX / mlx-lm
    versions as this Mac, and the model and data at the same paths. Local hosts share this Mac's
    files and Python, so only remote ones are probed."""
    runner = runner or _ssh
    python = python or sys.executable
    mine = local_versions()
    paths = [str(Path(p).resolve()) for p in paths]
    out = []
    for rank, h in enumerate(hosts):
        if h.local:
            missing = [p for p in paths if not os.path.exists(p)]
            out.append(HostCheck(h, rank, not missing, "" if not missing else f"{missing[0]} does not exist.",
                                 versions=mine, missing=missing))
            continue
        cmd = f"{shlex.quote(python)} -c {shlex.quote(_PROBE)} " + " ".join(shlex.quote(p) for p in paths)
        try:
            r = runner(h, cmd, timeout)
        except (subprocess.TimeoutExpired, OSError) as exc:
            out.append(HostCheck(h, rank, False, f"cannot be reached ({exc.__class__.__name__}).",
                                 f"Check that it is on, on the same network, and that `ssh {h.ssh}` works "
                                 "without a password (System Settings > General > Sharing > Remote Login)."))
            continue
        if r.returncode == 255:
            out.append(HostCheck(h, rank, False, f"cannot be reached: {(r.stderr or '').strip() or 'ssh failed'}.",
                                 f"Check that `ssh {h.ssh}` works without a password (Remote Login on, your "
                                 "key in its ~/.ssh/authorized_keys)."))
            continue
        try:
            info = json.loads((r.stdout or "").strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            out.append(HostCheck(h, rank, False, f"has no usable Tuneloom at {python}.",
                                 "Install the same Tuneloom there, at the same path."))
            continue
        theirs = info.get("versions", {})
        diff = [f"{k} {theirs.get(k)} (here {v})" for k, v in mine.items() if theirs.get(k) != v]
        if diff:
            out.append(HostCheck(h, rank, False, "runs different versions: " + ", ".join(diff) + ".",
                                 "Install the same Tuneloom and MLX versions on every Mac.", versions=theirs))
            continue
        missing = list(info.get("missing") or [])
        if missing:
            out.append(HostCheck(h, rank, False, f"lacks {missing[0]}" + (f" and {len(missing) - 1} more" if
                                 len(missing) > 1 else "") + ".",
                                 "Copy it there at the same path (tuneloom train --hosts ... --copy-missing, or "
                                 f"{copy_command(h, missing[0])}).", versions=theirs, missing=missing))
            continue
        out.append(HostCheck(h, rank, True, versions=theirs))
    return out


def copy_command(host: Host, path: str) -> str:
    parent = str(Path(path).parent)
    return f"rsync -a -- {shlex.quote(path)} {shlex.quote(host.ssh + ':' + parent + '/')}"


def copy_missing(checks: Sequence[HostCheck], events: Events | None = None) -> None:
    """Copy what each host lacks (the model folder, the data files) to the same path there."""
    events = events or NULL_EVENTS
    for c in checks:
        for p in c.missing:
            events.log("info", f"copying {p} to {c.host.ssh}")
            subprocess.run(["ssh", "-o", "BatchMode=yes", "--", c.host.ssh,
                            f"mkdir -p {shlex.quote(str(Path(p).parent))}"],
                           check=True, capture_output=True)
            subprocess.run(shlex.split(copy_command(c.host, p)), check=True)


_NODE_END = re.compile(r"Node with rank (\d+) (was killed|exited with code (-?\d+))")


def _launcher() -> list[str]:
    exe = Path(sys.executable).with_name("mlx.launch")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("mlx.launch")
    if found:
        return [found]
    return [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]


def launch_command(hosts: Sequence[Host], train_args: Sequence[str], hostfile: Path, *, backend: str = "ring",
                   port: int = DEFAULT_PORT, python: str | None = None) -> list[str]:
    """The ``mlx.launch`` command that runs ``tuneloom train TRAIN_ARGS`` as one rank per host."""
    if backend not in BACKENDS:
        raise GroupError(f"Unknown backend {backend!r}.", f"Choose one of: {', '.join(BACKENDS)}.")
    write_mlx_hostfile(hosts, hostfile, backend)
    return [*_launcher(), "--backend", backend, "--hostfile", str(hostfile), "--starting-port", str(port),
            "--python", python or sys.executable, "--env", f"TUNELOOM_DIST_BACKEND={backend}",
            "--env", f"TUNELOOM_GROUP_PARENT={socket.gethostname()}:{os.getpid()}",
            "--", "-m", "app.cli", "train", *train_args]


# Where free_port looks: below the ephemeral ranges (Linux 32768-60999, macOS 49152-65535), from which
# every outgoing connection on the machine takes its local port. A port found free there can be taken by
# such a connection before the ranks bind it (seconds later); below them only another listener can.
PORT_WINDOW = (20000, 32000)


def _ephemeral_range() -> tuple[int, int] | None:
    try:  # (Linux; None elsewhere: macOS's range starts above the window)
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return None


def _all_free(base: int, n: int) -> bool:
    for k in range(n):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + k))
            except OSError:
                return False
    return True


def free_port(n: int = 4) -> int:
    """A port with ``n - 1`` free ports after it on 127.0.0.1 (the ranks bind them; tests run several
    groups in a row), outside the ephemeral range where the machine can (:data:`PORT_WINDOW`)."""
    import random

    lo, hi = PORT_WINDOW
    eph = _ephemeral_range()
    if eph is None or eph[0] > hi + n or eph[1] < lo:
        rng = random.SystemRandom()
        for _ in range(100):
            base = rng.randrange(lo, hi)
            if _all_free(base, n):
                return base
    for _ in range(50):  # the window is taken (or inside the ephemeral range): a port the system gives
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65535 and _all_free(base + 1, n - 1):
            return base
    return DEFAULT_PORT


@dataclass
class GroupResult:
    returncode: int
    message: str = ""
    failed_rank: int | None = None
    failed_host: str | None = None
    output: str = ""


def launch(hosts: Sequence[Host], train_args: Sequence[str], *, run_dir: Path, backend: str = "ring",
           port: int | None = None, on_line: Callable[[str], None] | None = None,
           cancel: CancelToken | None = None) -> GroupResult:
    """Run the group; pass rank 0's output lines to ``on_line``; say which rank ended it when one fails.

    ``train_args`` are ``tuneloom train`` arguments; ``--out RUN_DIR`` (or ``--resume RUN_DIR``)
    must be among them so that every rank works on the same run folder.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = launch_command(hosts, train_args, run_dir / "hosts.json", backend=backend,
                         port=port or free_port(len(hosts) + 1))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    lines: list[str] = []
    ended: list[tuple[int, str]] = []

    def watch_cancel():
        import signal
        import time

        while proc.poll() is None:
            if cancel is not None and cancel.cancelled:
                try:  # every local rank sees SIGINT and stops after its step, as Ctrl-C does
                    os.killpg(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    return
                return
            time.sleep(0.2)

    if cancel is not None:
        threading.Thread(target=watch_cancel, daemon=True).start()
    assert proc.stdout is not None
    try:
        rc = _follow(proc, hosts, lines, ended, on_line)
    except BaseException:
        import signal

        try:  # an exception or Ctrl-C here: stop the whole group, not only this process
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        raise
    res = GroupResult(rc, output="\n".join(lines[-200:]))
    if ended:
        # the first rank that ended on its own; the others were stopped by mlx.launch after it
        rank, how = ended[0]
        host = hosts[rank].ssh if rank < len(hosts) else "?"
        res.failed_rank, res.failed_host = rank, host
        res.message = f"Rank {rank} on {host} {how}: the group stopped."
        if res.returncode == 0:
            res.returncode = 1
    elif rc != 0:
        res.message = f"The group stopped (exit code {rc})."
    return res


def _follow(proc, hosts, lines: list[str], ended: list[tuple[int, str]], on_line) -> int:
    for raw in proc.stdout:
        line = re.sub(r"\x1b\[[0-9;]*m", "", raw.rstrip("\n"))
        lines.append(line)
        m = _NODE_END.search(line)
        if m:
            ended.append((int(m.group(1)), m.group(2)))
            continue
        if on_line:
            on_line(line)
    return proc.wait()
