"""``python -m ckpt_migrate``."""

from ckpt_migrate.cli import main

main()
