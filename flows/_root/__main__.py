"""`python -m stillroom` is the `stillroom` command."""

from stillroom.flows._cli import main

main()
