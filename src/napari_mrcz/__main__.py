"""``python -m napari_mrcz``: the ``napari-mrcz`` command."""

import sys

from .cli import main

sys.exit(main())
