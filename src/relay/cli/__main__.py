"""`python -m relay.cli`."""

from . import main

main()
