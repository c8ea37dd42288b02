"""The ``powerbandit`` command and the operator-facing application behind it.

``main`` parses the command line; the other modules are what its subcommands run: the operator
view (``jobs``, ``report``), the dashboard, the demo, ``powerbandit run``, the node agent's
commands, health checks and exports. Nothing below this package (the SDK, the server, the
simulator's engine, the generated API in ``powerbandit.v1``) imports it.
"""
