"""`python -m stillroom.flows` is the `stillroom` command."""

from ._cli import main

main()
