"""``python -m perceptlab ...`` is the ``perceptlab`` command."""
from perceptlab.commands.cli import main

main()
