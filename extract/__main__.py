"""`python -m extract ...`: extract the region features of one manifest shard (see extract/shard.py)."""

import sys

from extract.shard import main

if __name__ == "__main__":
    sys.exit(main())
