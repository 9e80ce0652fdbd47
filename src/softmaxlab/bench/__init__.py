"""``softmaxlab bench``: the one benchmark harness (DESIGN.md §5). It measures the library's
functions and kernels against torch, the naive formulas and peer packages.

* :mod:`.records`: Case, Impl, Target, Row.
* :mod:`.stats`, :mod:`.timing`: statistics; steps, the timer, copy bandwidth.
* :mod:`.memory` (+ :mod:`._server`): peak memory (RSS in a fresh process, CUDA peak).
* :mod:`.environment`: machine, versions, git commit (also ``softmaxlab env``).
* :mod:`.results`: the result document: schema, definitions, save and load.
* :mod:`.runner`: the run loop, ratios, targets.
* :mod:`.baselines`, :mod:`.suites`: the implementations compared, the suites.
* :mod:`.report`, :mod:`.command`: rendering; the ``bench`` subcommand.

Nothing heavy is imported here: the command module is imported whenever the CLI builds its
parser.
"""
