"""The peer: a private Postfix instance and Postfix's `smtp-sink`, for side-by-side runs.

`PostfixInstance` writes its own main.cf and master.cf in a directory of the benchmark's, with its own queue
and data directories, listens on a loopback port of its own and relays everything to `relay_to` (an
`smtp-sink`). With `deliver=False` every message is put on hold, which the queue manager never schedules
(accepting alone, durably: cleanup still fsyncs every queue file before smtpd answers 250). The machine's
own Postfix instance, if any, is neither read nor touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from bench.common import free_port, wait_port

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_to}
smtpd_recipient_restrictions = permit_mynetworks, reject
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
"""

# Accepting alone: every message goes to the hold queue, which the queue manager never schedules. (Leaving the
# queue manager out instead costs each message a one-second timeout while cleanup tries to notify it.)
HOLD_ALL = "smtpd_end_of_data_restrictions = check_client_access static:HOLD\n"


def ensure_postfix() -> None:
    """Postfix and its smtp-source/smtp-sink, installed from Debian's package when missing (needs root)."""
    if all(shutil.which(tool) for tool in ("postfix", "smtp-source", "smtp-sink")) or all(
        Path(f"/usr/sbin/{tool}").exists() for tool in ("postfix", "smtp-source", "smtp-sink")
    ):
        return
    if os.geteuid() != 0:
        raise SystemExit("Postfix is missing and this is not root: apt-get install postfix, then run again")
    print("bench: installing Postfix from Debian (apt-get install postfix)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env, stdout=subprocess.DEVNULL)


def postfix_version() -> str:
    out = subprocess.run(["postconf", "-d", "-h", "mail_version"], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def _postfix(config_dir: Path, *args: str) -> None:
    """Run `postfix -c DIR ...`; its complaints go to syslog, absent here, so on failure show its maillog."""
    result = subprocess.run(["postfix", "-c", str(config_dir), *args], capture_output=True, text=True)
    if result.returncode != 0:
        maillog = config_dir.parent / "maillog"
        tail = maillog.read_text(errors="replace")[-2000:] if maillog.exists() else "(no maillog)"
        raise SystemExit(f"postfix {' '.join(args)} failed ({result.returncode}): {result.stderr}\n{tail}")


class PostfixInstance:
    def __init__(self, root: Path, *, relay_to: int, deliver: bool) -> None:
        self.root = root
        self.port = free_port()
        self.relay_to = relay_to
        self.deliver = deliver
        self.config_dir = root / "etc"

    def start(self) -> PostfixInstance:
        for name in ("etc", "spool", "data"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        shutil.chown(self.root / "data", user="postfix")
        main_cf = MAIN_CF.format(root=self.root, relay_to=self.relay_to) + ("" if self.deliver else HOLD_ALL)
        (self.config_dir / "main.cf").write_text(main_cf)
        (self.config_dir / "master.cf").write_text(self._master_cf())
        _postfix(self.config_dir, "start")
        wait_port(self.port, what="postfix")
        return self

    def _master_cf(self) -> str:
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if not fields or line.startswith(("#", " ", "\t")):
                lines.append(line)
                continue
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{self.port}"
            if len(fields) > 4:
                fields[4] = "n"  # no chroot: the private queue directory holds none of the chroot's files
            lines.append(" ".join(fields))
        return "\n".join(lines) + "\n"

    @property
    def pid(self) -> int:
        """The master process's pid."""
        return int((self.root / "spool" / "pid" / "master.pid").read_text().split()[0])

    def stop(self) -> None:
        _postfix(self.config_dir, "stop")
        # `postfix stop` returns once master has been told; wait for the port to close so the next run is alone
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                wait_port(self.port, timeout=0.1)
            except SystemExit:
                return
            time.sleep(0.1)

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used by `pid` and every descendant, the exited ones included (a process's
    children it has reaped count in its cutime/cstime): Postfix's smtpd, cleanup, qmgr and smtp come and go."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(value) for value in fields[11:15]) / ticks
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(member, 0.0) for member in tree)


class SmtpSink:
    """Postfix's `smtp-sink` on a loopback port, counting the messages it received (its `-c` counter)."""

    COUNTER = re.compile(rb"mesg=(\d+)")

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> SmtpSink:
        command = ["smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1024"]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port(self.port, what="smtp-sink")
        return self

    def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        pending = b""
        while chunk := self._process.stdout.read1(65536):
            pending = (pending + chunk)[-4096:]
            counts = self.COUNTER.findall(pending)
            if counts:
                self.count = int(counts[-1])

    def wait_for(self, count: int, *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while self.count < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out after {timeout} s waiting for {what} (sink has {self.count})")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
