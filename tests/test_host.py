"""`experiments.host`: when a command restarts itself with glibc's huge pages, and `python -m
experiments` (the command list and the host memory line)."""

import os
import subprocess
import sys

import pytest

from experiments import host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("argv,module", [
    (["python", "-m", "experiments.stage1", "--config=x"], "experiments.stage1"),
    (["python", "-mexperiments.fit"], "experiments.fit"),
    (["python", "-X", "importtime", "-W", "ignore", "-u", "-m", "experiments"], "experiments"),
    (["python", "-m", "pytest", "-m", "experiments.demo"], "pytest"),
    (["python", "-c", "import experiments", "-m", "experiments.demo"], None),
    (["python", "experiments/stage1.py", "-m", "experiments.demo"], None),
    (["python", "-"], None),
    (["python", "-m"], None),
    (["python"], None),
])
def test_main_module_is_what_python_runs(argv, module):
  assert host.main_module(argv) == module


DUE = dict(thp_mode="madvise", glibc=(2, 36))


def test_a_command_restarts_with_the_tunable_added_to_the_environment():
  environ = {"PATH": "/bin", "HOME": "/h"}
  assert host.huge_pages_environment(["py", "-m", "experiments.stage2"], environ, **DUE) == {
      "PATH": "/bin", "HOME": "/h", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert environ == {"PATH": "/bin", "HOME": "/h"}  # the caller's mapping is left alone
  other = {"GLIBC_TUNABLES": "glibc.malloc.check=3:glibc.malloc.tcache_count=0"}
  assert host.huge_pages_environment(["py", "-m", "experiments"], other, **DUE) == {
      "GLIBC_TUNABLES": "glibc.malloc.check=3:glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"}


@pytest.mark.parametrize("argv,environ,thp_mode,glibc", [
    (["py", "-m", "pytest"], {}, "madvise", (2, 36)),  # not a command
    (["py", "-m", "experimentsx.a"], {}, "madvise", (2, 36)),
    (["py", "-c", "import experiments"], {}, "madvise", (2, 36)),
    (["py", "-m", "experiments.demo"], {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise",
     (2, 36)),  # the user's choice, or our own restart: kept, so it never loops
    (["py", "-m", "experiments.demo"], {"GLIBC_TUNABLES": "a=1:glibc.malloc.hugetlb=1"}, "madvise",
     (2, 36)),
    (["py", "-m", "experiments.demo"], {}, "always", (2, 36)),  # huge pages without asking
    (["py", "-m", "experiments.demo"], {}, "never", (2, 36)),
    (["py", "-m", "experiments.demo"], {}, None, (2, 36)),  # not Linux
    (["py", "-m", "experiments.demo"], {}, "madvise", (2, 34)),  # glibc without the tunable
    (["py", "-m", "experiments.demo"], {}, "madvise", None),  # not glibc
])
def test_no_restart_where_it_would_not_help_or_was_decided(argv, environ, thp_mode, glibc):
  assert host.huge_pages_environment(argv, environ, thp_mode=thp_mode, glibc=glibc) is None


def test_the_kernel_mode_and_the_tunable_are_read_as_written(tmp_path):
  mode_file = tmp_path / "enabled"
  mode_file.write_text("always [madvise] never\n")
  assert host.transparent_huge_pages(str(mode_file)) == "madvise"
  mode_file.write_text("[always] madvise never\n")
  assert host.transparent_huge_pages(str(mode_file)) == "always"
  assert host.transparent_huge_pages(str(tmp_path / "absent")) is None
  assert host.tunable_value({}) is None
  assert host.tunable_value({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2:x=1"}) == "2"
  assert host.tunable_value({"GLIBC_TUNABLES": "glibc.malloc.hugetlbx=1"}) is None
  version = host.glibc_version()
  if version is not None:
    assert os.confstr("CS_GNU_LIBC_VERSION").startswith(f"glibc {version[0]}.{version[1]}")


def _experiments(environ):
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  result = subprocess.run([sys.executable, "-m", "experiments"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**env, **environ})
  assert result.returncode == 0, result.stderr
  return result.stdout.splitlines()


def test_the_command_list_and_the_memory_it_runs_under():
  """`python -m experiments` lists the entry points (not the shared modules) and ends with the
  host line; the tunable is on exactly when this machine's kernel and glibc call for it, and an
  explicit setting is kept."""
  lines = _experiments({})
  listed = {line.split()[0] for line in lines[1:-1]}
  assert {"experiments.stage1", "experiments.stage2", "experiments.demo",
          "experiments.benchmarks.compare_torch", "experiments.studies.shape_floor"} <= listed
  assert not listed & {"experiments.cli", "experiments.host", "experiments.image_eval",
                       "experiments.benchmarks.common", "experiments.benchmarks.steps"}
  stage1_line = next(line for line in lines if line.split()[0] == "experiments.stage1")
  import experiments.stage1
  assert stage1_line.split(None, 1)[1] == experiments.stage1.__doc__.split(".")[0] + "."
  due = host.huge_pages_environment(["python", "-m", "experiments"], {},
                                    thp_mode=host.transparent_huge_pages(),
                                    glibc=host.glibc_version()) is not None
  mode = host.transparent_huge_pages() or "n/a"
  assert lines[-1] == (f"host memory: transparent huge pages {mode}, glibc.malloc.hugetlb="
                       f"{'1' if due else 'unset'}")
  assert _experiments({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})[-1].endswith("hugetlb=0")
