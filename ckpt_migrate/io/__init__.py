"""Where bytes come from and go to: sources, folder trees (local or fsspec), atomic outputs, digests."""
