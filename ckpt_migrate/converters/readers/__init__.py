"""One reader per source format; each sniffs bytes, then opens the file through the safe interpreter."""
