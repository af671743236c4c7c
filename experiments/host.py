"""The host process's memory settings: transparent huge pages for the commands on Linux CPUs.

Where the time of a large CPU step goes (WORKSPACE.md, "Host memory"): glibc serves every
allocation above 32 MB with a fresh `mmap`, so each step's large buffers (XLA's temporaries,
decoded faces, PyTorch's intermediates) are new 4 KiB pages that the kernel faults in one by
one. With transparent huge pages in the kernel's `madvise` mode (this machine's, and a common
distribution default), glibc >= 2.35 asks for 2 MiB pages when `GLIBC_TUNABLES` holds
`glibc.malloc.hugetlb=1`: measured on the 2-core CPU, the paper-shape stage-1 step 1.16-1.20x
faster, the `demo` stage-2 step 1.11-1.15x, decode 1.16-1.5x; peak memory the same to 4%
(`:paper` stage 2, reduced: 10.45 against 10.05 GiB). The memory is returned to the system as
before (unlike turning `mmap` off).

The tunable is read when the process starts, so `restart_with_huge_pages` (called by
`experiments/__init__.py`, before anything else is imported) replaces `python -m
experiments.<command> ...` once by the same command with the tunable added. An explicit
`glibc.malloc.hugetlb` in `GLIBC_TUNABLES` (e.g. `=0`, to turn this off) is left as it is, and
nothing happens elsewhere: other systems, other modes, other programs importing `experiments`
(pytest, a notebook). Only the standard library is imported here.
"""

from __future__ import annotations

import os
import re
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with the tunable


def transparent_huge_pages(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode (`always`, `madvise`, `never`), None off Linux."""
  try:
    with open(path, encoding="ascii") as f:
      match = re.search(r"\[(\w+)\]", f.read())
  except OSError:
    return None
  return match.group(1) if match else None


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library when it is glibc, else None."""
  try:
    name = os.confstr("CS_GNU_LIBC_VERSION") or ""
  except (AttributeError, ValueError, OSError):
    return None
  match = re.fullmatch(r"glibc (\d+)\.(\d+).*", name)
  return (int(match.group(1)), int(match.group(2))) if match else None


def tunable_value(environ) -> str | None:
  """The value `GLIBC_TUNABLES` in `environ` gives `glibc.malloc.hugetlb`, None if absent."""
  for item in environ.get("GLIBC_TUNABLES", "").split(":"):
    name, _, value = item.partition("=")
    if name == TUNABLE:
      return value
  return None


def main_module(argv: list[str]) -> str | None:
  """The module a `python [options] -m MODULE ...` command line runs, None for other forms."""
  i = 1
  while i < len(argv):
    arg = argv[i]
    if arg == "-m":
      return argv[i + 1] if i + 1 < len(argv) else None
    if arg.startswith("-m"):
      return arg[2:]
    if arg == "-c" or arg == "-" or not arg.startswith("-"):  # code, stdin or a script path
      return None
    i += 2 if arg in ("-X", "-W") else 1  # the options that take a separate value
  return None


def huge_pages_environment(argv: list[str], environ, *, thp_mode: str | None,
                           glibc: tuple[int, int] | None) -> dict | None:
  """The environment to restart `argv` in, or None when no restart is due: it is due only for
  `python -m experiments[.<command>]` on glibc >= 2.35 with the kernel in `madvise` mode (in
  `always` mode large buffers get huge pages without asking) and no `glibc.malloc.hugetlb` set."""
  module = main_module(argv)
  if module is None or not (module == "experiments" or module.startswith("experiments.")):
    return None
  if thp_mode != "madvise" or glibc is None or glibc < MIN_GLIBC:
    return None
  if tunable_value(environ) is not None:
    return None
  existing = environ.get("GLIBC_TUNABLES", "")
  return {**environ, "GLIBC_TUNABLES": f"{existing}:{TUNABLE}=1" if existing else f"{TUNABLE}=1"}


def restart_with_huge_pages() -> None:
  """Replaces this process by the same command with `glibc.malloc.hugetlb=1` when
  `huge_pages_environment` says so (same PID, arguments, working folder and open files)."""
  argv = getattr(sys, "orig_argv", None)
  if not argv:
    return
  environment = huge_pages_environment(argv, os.environ, thp_mode=transparent_huge_pages(),
                                       glibc=glibc_version())
  if environment is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *argv[1:]], environment)
  except OSError:  # could not restart: carry on with 4 KiB pages
    return


def memory_settings() -> dict:
  """What a benchmark ran under (its header and JSON): the kernel's mode and the tunable."""
  return {"transparent_huge_pages": transparent_huge_pages(),
          "malloc_hugetlb": tunable_value(os.environ), "glibc": glibc_version()}


def describe_memory_settings(settings: dict | None = None) -> str:
  """One line for a benchmark's header, e.g. `host memory: transparent huge pages madvise,
  glibc.malloc.hugetlb=1`."""
  settings = memory_settings() if settings is None else settings
  value = settings["malloc_hugetlb"]
  return (f"host memory: transparent huge pages {settings['transparent_huge_pages'] or 'n/a'}, "
          f"{TUNABLE}={value if value is not None else 'unset'}")
