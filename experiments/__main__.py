"""`python -m experiments`: the commands, one sentence each, and the host memory they run under.

Each command's own `--help` says more. The commands are the modules here (and in `benchmarks/`
and `studies/`) that end in `cli.run` or `cli.run_stage`; their docstrings are read without
importing them, so this answers at once.
"""

import ast
import os
import re

from experiments import host

_HERE = os.path.dirname(os.path.abspath(__file__))


def commands(folder: str = _HERE, package: str = "experiments") -> list[tuple[str, str]]:
  """(module, first docstring sentence) of every entry point in `folder` and its subpackages."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if os.path.isfile(os.path.join(root, d, "__init__.py")))
    for name in sorted(files):
      if not name.endswith(".py") or name.startswith("_"):
        continue
      with open(os.path.join(root, name), encoding="utf-8") as f:
        source = f.read()
      if "cli.run(" not in source and "cli.run_stage(" not in source:
        continue
      relative = os.path.relpath(os.path.join(root, name[:-3]), folder)
      module = ".".join([package, *relative.split(os.sep)])
      paragraph = " ".join((ast.get_docstring(ast.parse(source)) or "").split("\n\n")[0].split())
      sentence = re.split(r"(?<=\.)\s(?=[A-Z`])", paragraph)[0]
      found.append((module, sentence if len(sentence) <= 100 else sentence[:99] + "…"))
  return found


def main() -> None:
  rows = commands()
  width = max(len(module) for module, _ in rows)
  print("python -m <command> --help says more. Commands:")
  for module, line in rows:
    print(f"  {module:<{width}}  {line}")
  print(host.describe_memory_settings())


if __name__ == "__main__":
  main()
