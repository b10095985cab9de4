"""One writer per output format; each writes atomically and verifies what it wrote."""
