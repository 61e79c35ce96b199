"""``python -m dualsae`` (and ``torchrun ... -m dualsae``): the ``dualsae`` command."""

import sys

from dualsae.cli import main

if __name__ == "__main__":
    sys.exit(main())
