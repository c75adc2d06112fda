"""`ray job submit ... -- python jobs/distill.py --config CONFIG --run-dir RUN [--set ...]`

Entry point only: parses the command line and calls the `distill` stage (see lmcot/cli.py).
"""

import sys

if __name__ == "__main__":
    from lmcot.cli import main

    sys.exit(main(["distill", *sys.argv[1:]]))
