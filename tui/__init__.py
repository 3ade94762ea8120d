"""The RL Lab terminal app (Textual)."""
