"""`ray job submit ... -- python jobs/evaluate.py --config CONFIG --run-dir RUN [--set ...]`

Entry point only: parses the command line and calls the `eval` stage (see lmcot/cli.py).
"""

import sys

if __name__ == "__main__":
    from lmcot.cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))
