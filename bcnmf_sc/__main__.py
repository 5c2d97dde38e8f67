"""``python -m bcnmf_sc``: the ``bcnmf-sc`` command line."""

import sys

from ._cli import main

sys.exit(main())
