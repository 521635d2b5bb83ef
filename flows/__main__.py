"""`python -m flows` is the `understudy` command."""

from flows._cli import main

main()
