"""``python -m myriad`` runs the command line."""

from myriad.cli import main

main()
