"""``python -m depthkv``: the ``depthkv`` command (also what ``torchrun -m depthkv`` runs)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from depthkv.cli import main

    sys.exit(main())
