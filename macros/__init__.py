"""The lab's Sardana macros (installed as the package ``tangodaq_macros``).

The MacroServer loads them by file from its ``MacroPath``, which ``tangodaq up`` and ``tangodaq
deploy`` set to this folder (``tango_db.config.sardana_paths``). The MacroServer skips modules
whose name starts with ``_``, so this file is not taken for a macro library.
"""
