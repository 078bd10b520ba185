"""python -m trainstack: same as the `trainstack` command."""

import sys

from trainstack.cli import main

sys.exit(main())
