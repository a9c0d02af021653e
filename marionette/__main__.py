"""``python -m marionette`` (and ``torchrun ... -m marionette``): the ``marionette`` command."""

import sys

from .cli import main

sys.exit(main())
