"""``python -m loop ARGS`` = ``auxseg ARGS`` (for ``torchrun -m loop pretrain CONFIG``)."""

import sys

from loop.cli import main

sys.exit(main())
