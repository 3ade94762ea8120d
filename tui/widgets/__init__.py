"""Widgets of the RL Lab terminal app."""
