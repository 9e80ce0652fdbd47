"""``softmaxlab bench``: the one benchmark harness (DESIGN.md §5).

* :mod:`.harness`: timing, statistics, peak memory, copy bandwidth, the result document.
* :mod:`.cases`: the suites and their cases (candidate, baselines, I/O counts, targets).
* :mod:`.report`: terminal table, Markdown, chart.
* :mod:`.command`: the ``bench`` subcommand.

Nothing heavy is imported here: the command module is imported whenever the CLI builds its
parser.
"""
