"""Everything that reads activation files: probes, contrastive search, SAEs, feature statistics.

This package never imports ``rl_lab``: it works on any HDF5 file that follows the activation
contract in ``docs/design.md``.
"""
