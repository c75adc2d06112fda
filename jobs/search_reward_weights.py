"""`ray job submit ... -- python jobs/search_reward_weights.py --config CONFIG --run-dir RUN [--set ...]`

Entry point only: parses the command line and calls the `search` stage (see lmcot/cli.py).
"""

import sys

if __name__ == "__main__":
    from lmcot.cli import main

    sys.exit(main(["search", *sys.argv[1:]]))
