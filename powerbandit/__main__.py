"""``python -m powerbandit`` is the ``powerbandit`` command."""

from powerbandit.cli import main

main()
