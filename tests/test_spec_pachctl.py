"""The pachctl shim's answer to commands other than `next datum`: start-up commands pipelines
call to reach a cluster are ignored with a note; commands that need a cluster fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pfsmount import shims

PACHCTL = [sys.executable, "-m", "pfsmount.pachctl"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    # No worker port: an ignored command must not try to reach one.
    env = {k: v for k, v in os.environ.items() if k != "PPS_WORKER_GRPC_PORT"}
    return subprocess.run([*PACHCTL, *argv], env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["connect", "grpc://localhost:30650"], "connect"),
        (["config", "set", "context", "local", "--overwrite"], "config"),
        (["config", "update", "context", "--pachd-address", "localhost:30650"], "config"),
        (["-v", "auth", "whoami"], "auth whoami"),
        (["auth", "login", "--no-browser", "--one-time-password"], "auth login"),
    ],
)  # fmt: skip
def test_start_up_commands_succeed_with_a_note(argv: list[str], shown: str) -> None:
    done = run(*argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == (
        f"pachctl: pfsmount's shim ignored `pachctl {shown}` (there is no Pachyderm cluster "
        "under pfsmount; only `pachctl next datum` does something)\n"
    )


def test_the_note_never_repeats_arguments_that_may_be_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert shims.pachctl_main(["auth", "login", "--token", "s3cr3t"]) == 0
    assert "s3cr3t" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["version"], ["version", "--client-only"]])
def test_version_still_answers_on_stdout(argv: list[str]) -> None:
    done = run(*argv)
    assert done.returncode == 0
    assert "pfsmount" in done.stdout


@pytest.mark.parametrize(
    ("argv", "fix"),
    [
        (["put", "file", "out@master:/a", "-f", "a"], "write the file under /pfs/out instead"),
        (["get", "file", "images@master:/a.png"], "read the input under /pfs/<input name>"),
        (["list", "file", "images@master"], "list the input under /pfs/<input name>"),
        (["create", "repo", "images"], "that needs a Pachyderm cluster"),
        (["auth", "activate"], "that needs a Pachyderm cluster"),
        (["list", "repo"], "that needs a Pachyderm cluster"),
    ],
)  # fmt: skip
def test_commands_that_need_a_cluster_fail_with_one_clear_line(
    argv: list[str], fix: str
) -> None:
    done = run(*argv)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pachctl: pfsmount's pachctl shim only supports "
                               "`pachctl next datum`")
    assert f"not `pachctl {' '.join(argv[:2])}" in lines[0]
    assert fix in lines[0]
