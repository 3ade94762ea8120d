"""Sequence models trained offline on an RL agent's trajectories: the decision transformer (``dt``)
and its behaviour-cloning variant (``bc``), built on TransformerLens 4. See ``docs/dt.md``.

Modules: ``model`` (the network), ``trajectories`` (the HDF5 offline dataset), ``train``
(``rl-lab train --algo dt|bc --from RUN``), ``evaluate`` (acting, the RTG calibration curve),
``record`` (the recorder's adapter).
"""
