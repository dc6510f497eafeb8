"""``python -m longtail``: the ``longtail`` command line (``longtail.cli.main``)."""
import sys

from longtail.cli import main

if __name__ == "__main__":  # not when re-imported as ``__mp_main__`` by spawned workers
    sys.exit(main())
