"""The pipeline between reading and writing: schemas applied, dtype casts, optimizer stripping, output bounds."""
