"""``python -m powerbandit`` is the ``powerbandit`` command."""

from powerbandit.cli.main import main

main()
