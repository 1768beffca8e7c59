"""The per-host lock manager daemon: leases held for processes, released when they die,
fenced when storage is lost.  See ``server`` (socket API), ``manager`` (what is held for
whom), ``watchdog`` (kills protected clients if the daemon dies) and ``protocol``."""
