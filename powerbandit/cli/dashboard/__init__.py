"""``powerbandit dashboard``: a read-only web dashboard over the public API.

:mod:`.data` computes what the pages show from ``Job`` messages (through
:mod:`powerbandit.cli.operator_view`), :mod:`.server` serves the pages and their JSON, :mod:`.cli`
is the command. The pages and the vendored chart library (uPlot, MIT) are package data under
``static/``: nothing is loaded from the network.
"""
