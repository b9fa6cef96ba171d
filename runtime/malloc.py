"""Transparent huge pages for glibc's malloc, set before the process starts.

On CPU, XLA and torch allocate and free a step's large temporaries every
step (SASRec's full-catalog logits on P1 are 6,400 x 9,724 floats, 250
MB). glibc serves blocks that large with a fresh `mmap`, and the kernel
then faults them in and zero-fills them one 4 KiB page at a time: on the
project's 2-core CPU machine the process spent as much time in the kernel
as in the model. glibc 2.35 and later can back malloc with transparent huge
pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`); measured there, a SASRec
step went from 706 to 438 ms with identical losses, and a bare
6,400 x 9,724 softmax gradient from 294 to 147 ms (docs/performance.md).

The tunable is read once, when glibc starts, so `main.py` re-executes
itself with it set (`reexec_tuned`) before anything heavy is imported;
benchmark children get it in their environment (`tuned_environ`). Nothing
happens off Linux, with an older glibc, when the kernel has transparent
huge pages off, when `GLIBC_TUNABLES` already names the setting, or when
`RECSYS_HUGEPAGE_MALLOC=0`.
"""

import os
import pathlib
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "RECSYS_HUGEPAGE_MALLOC"  # "0" keeps the allocator as it is
MIN_GLIBC = (2, 35)
THP_ENABLED = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def glibc_version():
    """`(major, minor)` of the running glibc, or None (not glibc)."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        return None
    name, _, version = text.partition(" ")
    parts = version.split(".")
    if name != "glibc" or len(parts) < 2:
        return None
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return None


def huge_pages_available(path=THP_ENABLED) -> bool:
    """The kernel's transparent huge pages are `always` or `madvise`."""
    try:
        text = pathlib.Path(path).read_text()
    except OSError:
        return False
    return "[always]" in text or "[madvise]" in text


_DETECT = object()


def tuned_environ(environ, platform=None, glibc=_DETECT, thp=None):
    """A copy of `environ` with `glibc.malloc.hugetlb=1` added to
    `GLIBC_TUNABLES`, or None where it does not apply or is already set.

    `platform`, `glibc` (`(major, minor)`, None = not glibc) and `thp`
    default to this machine's (for tests).
    """
    platform = sys.platform if platform is None else platform
    if not platform.startswith("linux") or environ.get(OPT_OUT) == "0":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in current:
        return None
    glibc = glibc_version() if glibc is _DETECT else glibc
    if glibc is None or glibc < MIN_GLIBC:
        return None
    if not (huge_pages_available() if thp is None else thp):
        return None
    setting = f"{TUNABLE}=1"
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{current}:{setting}" if current else setting
    return env


def reexec_tuned():
    """Replace this process by the same command with the tunable set (the
    interpreter's own options kept); returns only where nothing applies."""
    env = tuned_environ(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)
