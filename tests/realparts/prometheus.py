"""prometheus fixtures (being written)."""
