"""The torture harness: many hosts, crashes, freezes and bad I/O, and a checker.

``orchestrator`` starts one process per host (``worker``) on a shared
lockspace and resource, kills and freezes them at random, and plays the
watchdog: a host whose lease has expired while it still holds a resource is
killed, as a watchdog device would reset it.  ``checker`` then reads only the
hosts' append-only logs and proves that no two exclusive holding intervals
overlap and that lver strictly increases.
"""
