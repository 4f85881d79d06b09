"""``python -m ttlora_moe.cli``: the same as the ``ttlora-moe`` command."""

import sys

from ttlora_moe.cli import main

sys.exit(main())
