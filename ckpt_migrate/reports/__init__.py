"""What the read-only commands report: inspect, scan, check, diff; and the inert rendering of file strings."""
