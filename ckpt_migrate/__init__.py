"""ckpt-migrate."""
