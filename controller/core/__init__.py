"""Pure computation: no I/O, no clock reads (`now` is a parameter), no network or database libraries."""
