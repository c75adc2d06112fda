"""Write synthetic HotpotQA / 2WikiMultiHopQA data: the shipped samples in lmcot/data/, or new worlds.

The generator lives in :mod:`lmcot.tinyworld.synthetic` (its docstring says how and why);
this is its command line::

    python tools/make_synthetic_data.py                                  # the shipped samples, byte for byte
    python tools/make_synthetic_data.py --check                          # exit 1 if they are stale
    python tools/make_synthetic_data.py --seed S --out-dir D [--train N] [--dev N]   # another world
"""

import sys

from lmcot.tinyworld.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
