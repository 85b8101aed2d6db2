"""``python -m pipeline.cli``: the ``pancreas-seg`` command (also under ``torchrun``)."""

import sys

from pipeline.cli.app import main

sys.exit(main())
