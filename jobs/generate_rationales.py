"""`ray job submit ... -- python jobs/generate_rationales.py --config CONFIG --run-dir RUN [--set ...]`

Entry point only: parses the command line and calls the `generate-rationales` stage (see lmcot/cli.py).
"""

import sys

if __name__ == "__main__":
    from lmcot.cli import main

    sys.exit(main(["generate-rationales", *sys.argv[1:]]))
