"""Screens of the RL Lab terminal app."""
