"""python -m mt_nllb ... (same as the mt-nllb console script)."""

import sys

from .cli import main

sys.exit(main())
