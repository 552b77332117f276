"""Index of a dataset's feature shards: image_id → (shard, row).

    python -m extract.gather --shards resources/features/coco/shard-*.parquet \\
        --out resources/features/coco/index.parquet

Refuses shards of different detectors, weights, box settings, feature layouts or vocabularies
(mixing them would silently corrupt training) and duplicate image ids; a different code version
is only warned about. The index format and its builder are `cavl.shards`' (:func:`build_index`).
"""

import argparse
import logging
import sys

from cavl.io import write_parquet_atomic
from cavl.shards import build_index

log = logging.getLogger("extract.gather")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m extract.gather", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", nargs="+", required=True, help="the dataset's shard-NNNNN.parquet files")
    p.add_argument("--out", required=True, help="index Parquet to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    table, metadata = build_index(args.shards)
    write_parquet_atomic(table, args.out, metadata)
    log.info("indexed %d images from %d shards (%d failures) into %s", metadata["num_images"],
             len(args.shards), metadata["num_failures"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
