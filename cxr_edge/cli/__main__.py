"""``python -m cxr_edge.cli``: the same as the ``cxr-edge`` command."""

from cxr_edge.cli import main

main()
