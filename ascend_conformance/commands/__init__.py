"""One module per `ascend-conformance` subcommand.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` (the exit
code). Modules import heavy dependencies (torch) inside ``run`` so that ``--help`` and the device-free
commands stay fast.
"""

# Order is the order of `ascend-conformance --help`.
COMMAND_MODULES = ("info", "topology", "moe", "stack", "matrix", "baseline_compare", "report", "expectations",
                   "acceptance")
