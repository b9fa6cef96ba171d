"""runtime/malloc.py: when the huge-page malloc tunable is added, and that
main.py really starts with it."""

import os
import subprocess
import sys

import pytest

from runtime import malloc

LINUX = {"platform": "linux", "glibc": (2, 36), "thp": True}


def test_adds_the_tunable_and_keeps_the_others():
    env = malloc.tuned_environ({"A": "1"}, **LINUX)
    assert env == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = malloc.tuned_environ(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **LINUX
    )
    assert env["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    )


@pytest.mark.parametrize(
    "environ, machine",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}),  # user's choice
        ({malloc.OPT_OUT: "0"}, {}),
        ({}, {"platform": "darwin"}),
        ({}, {"glibc": (2, 31)}),
        ({}, {"glibc": None}),
        ({}, {"thp": False}),
    ],
)
def test_leaves_the_environment_alone(environ, machine):
    assert malloc.tuned_environ(environ, **{**LINUX, **machine}) is None


def test_glibc_version_and_thp_are_read(tmp_path):
    version = malloc.glibc_version()
    assert version is None or (len(version) == 2 and version[0] >= 2)
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert malloc.huge_pages_available(path)
    path.write_text("always madvise [never]\n")
    assert not malloc.huge_pages_available(path)
    assert not malloc.huge_pages_available(tmp_path / "missing")


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


@pytest.mark.skipif(
    malloc.tuned_environ({}) is None, reason="the tunable does not apply here"
)
def test_reexec_restarts_the_same_command_with_the_tunable():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    code = (
        "import os, sys; from runtime import malloc; malloc.reexec_tuned();"
        "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "x"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.stdout.split() == ["glibc.malloc.hugetlb=1", "['x']"], out
    out = subprocess.run(
        [sys.executable, "main.py", "--help"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "usage: main.py" in out.stdout
