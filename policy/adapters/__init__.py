"""I/O behind small interfaces (base.py): the SQL policy store, quota backends (memory, Redis)."""
