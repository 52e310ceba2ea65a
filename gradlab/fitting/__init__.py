"""The fit wing: [`fit`][gradlab.fit] is [`prepare_fit`][gradlab.prepare_fit] then
[`PreparedFit.run`][gradlab.PreparedFit.run].

- ``_prepare``: checks the problem, data, engine and optimizer once and readies them
  (``PreparedFit``); each run moves the start, builds the carry and runs stretches.
- ``_optimizer``: the optimizer checked, and whether it is optax's, decided once.
- ``_step``: the loop body (``Step``) and what it carries (``Carry``).
- ``_run``: a fit in stretches, the stop rules, divergence located.
- ``_stop``, ``_result``: ``Stop`` and ``FitResult``.
"""
