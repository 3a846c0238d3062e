"""`python -m kindling_bundle` runs the command-line tool."""

from kindling_bundle.cli import main

main()
