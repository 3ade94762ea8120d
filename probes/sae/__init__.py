"""Sparse autoencoders on recorded activations: TopK (with AuxK) and ReLU (with L1).

The package is split so that only what needs torch loads it:

- ``probes.sae.config``: the config dataclasses, architecture names, the default width and
  output folder, the command-line options (torch-free);
- ``probes.sae.model``: the SAE modules, their registry, save/load (SAELens layout) and
  ``metrics.json``;
- ``probes.sae.data``: training rows in memory or streamed from an HDF5 file;
- ``probes.sae.training``: the training loop, held-out metrics and ``train_sae_on_file``;
- ``probes.sae.features``: ``compute_features``, the per-latent statistics
  (read back with the torch-free ``probes.features.FeatureStore``);
- ``probes.sae.planted``: a planted sparse dictionary to validate SAEs against.

Script: ``python -m probes.sae FILE.h5 --hook NAME [...]``. See ``docs/sae.md``.

This module imports nothing: importing ``probes.sae.config`` must not load torch.
"""
