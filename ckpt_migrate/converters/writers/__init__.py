"""writers: see the package docstring of ckpt_migrate for the layout."""
