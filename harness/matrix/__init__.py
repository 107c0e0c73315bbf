"""mmhil's page-permission matrix (docs/access-matrix.md).

- :mod:`harness.matrix.model`: the SDM's rules for access rights, #PF error codes and A/D bits, and
  QEMU 7.2 TCG's named quirks and choices;
- :mod:`harness.matrix.cases`: the unpruned space, the pruning rules, the pruned cases;
- :mod:`harness.matrix.codec`: the batch encoding and where each case's entries are in guest RAM;
- :mod:`harness.matrix.runner`: running cases on a VM and comparing prediction, observation and RAM.
"""
