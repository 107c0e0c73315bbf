"""mmhil: hardware-in-the-loop tests of Windows memory-manager DDIs on real x86-64 page tables.

The modules follow the data flow: ``config`` (what VM) -> ``machine`` (the QEMU process) ->
``qmp``, ``console`` and ``agent`` (the channels) -> ``guest`` (the DDIs under their NT names) ->
``oracle`` (guest memory, page-table walker, verification) -> ``pytest_plugin`` and ``cli``.
"""

__version__ = "0.1.0"
