"""Storage timing: what lease I/O costs on a given storage, and diskpaxos beside sanlock.

``storage`` measures one target and recommends an io_timeout; ``compare`` runs
the same scenarios with diskpaxos and the real sanlock in one run.  The
modules below them each do one job: ``stats`` (percentiles, histograms),
``floor`` (the bare I/O), ``scratch`` (the guard before anything is written),
``recommend`` (spec section 7 applied to measured tails), ``daemons`` (both
lock managers as processes), ``plot`` (matplotlib, optional).
"""
