"""gateway/cli.py, the `vpatch` entry point: every subcommand registered and listed in order,
no command prints the help (status 2), --version, a VpatchError of any command is one line on
stderr naming the command (status 2), and Ctrl-C during a command exits 130, sent as a real
SIGINT to a real `python -m gateway.cli` blocked reading a capture from a pipe. The commands
themselves are in tests/commands/."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import COMMANDS, build_parser, main
from gateway.testing.inline import package_env

REPO = Path(__file__).resolve().parents[1]


def test_every_command_is_registered_and_listed_in_order() -> None:
    help_text = build_parser().format_help()
    # each subcommand's line in the help, with its one-line help text, in COMMANDS order
    # (a long name has its help on the next line)
    positions = [re.search(rf"\n    {name}[ \n]", help_text).start() for name in COMMANDS]  # type: ignore[union-attr]
    assert positions == sorted(positions) and len(set(COMMANDS)) == len(COMMANDS)


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: vpatch") and "COMMAND" in out


def test_version_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out == f"vpatch {__version__}\n"
    with pytest.raises(SystemExit) as unknown:
        main(["nonsense"])
    assert unknown.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err


def test_a_vpatch_error_is_one_line_naming_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"
    assert main(["replay", "-c", str(missing), str(tmp_path / "x.pcap")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("vpatch replay: error: ") and str(missing) in line
    # an error made of several problems (every rule problem) keeps them on their own lines
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: 1\n")
    assert main(["replay", "--rules", str(bad), str(tmp_path / "x.pcap")]) == 2
    first, *problems = capsys.readouterr().err.splitlines()
    assert first.startswith("vpatch replay: error: ") and problems
    assert all(p.startswith(f"  {bad}:1: ") for p in problems)


def test_ctrl_c_during_a_command_exits_130(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "replay", "--rules",
         str(REPO / "rules" / "vpatch-test-split.yaml"), "/dev/stdin"],
        stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
        env=package_env(),
        # as from a terminal: a test run started in the background (`cmd &`) ignores SIGINT,
        # and a child inherits that; Python then installs no KeyboardInterrupt handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        # a pcap header, then nothing: once the child has read the header it is inside the
        # command, blocked reading the first record
        os.write(write_end, struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        deadline = time.monotonic() + 60
        while _unread(read_end) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert _unread(read_end) == 0 and proc.poll() is None
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        os.close(write_end)
        os.close(read_end)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err


def _unread(fd: int) -> int:
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])
