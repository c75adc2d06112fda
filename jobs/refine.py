"""`ray job submit ... -- python jobs/refine.py --config CONFIG --run-dir RUN [--set ...]`

Entry point only: parses the command line and calls the `refine` stage (see lmcot/cli.py).
"""

import sys

if __name__ == "__main__":
    from lmcot.cli import main

    sys.exit(main(["refine", *sys.argv[1:]]))
