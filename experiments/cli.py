"""`run(main)`: `absl.app.run` where bad input (`ValueError`, raised with the file, key or line
at the boundary) ends the program with that one message on stderr and exit status 1, instead
of a traceback."""

import sys

from absl import app


def run(main) -> None:
  def guarded(argv):
    try:
      return main(argv)
    except ValueError as e:
      program = sys.argv[0].rsplit("/", 1)[-1]
      print(f"{program}: error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)
  app.run(guarded)
