"""``python -m ckpt_migrate``."""

from .cli import main

main()
