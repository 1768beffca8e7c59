"""diskpaxos: storage leases compatible with sanlock's on-disk format."""

__version__ = "0.1.0"
