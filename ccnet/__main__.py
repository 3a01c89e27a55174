"""``python -m ccnet``: the ``ccnet`` command."""

import sys

from ccnet.cli import main

sys.exit(main())
