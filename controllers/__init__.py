"""The lab's Sardana Pool controllers (installed as the package ``tangodaq_controllers``).

The Pool loads them by file from its ``PoolPath``, which ``tangodaq up`` and ``tangodaq deploy``
set to this folder (``tango_db.config.sardana_paths``). The Pool skips this ``__init__`` (its
name does not start with a letter).
"""
