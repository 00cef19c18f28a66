"""kafka fixtures (being written)."""
