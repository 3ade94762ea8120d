"""RL Lab: train agents, record what happens inside them, probe and edit it."""

__version__ = "0.1.0"
