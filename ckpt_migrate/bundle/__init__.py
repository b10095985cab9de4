"""What a training bundle holds, torch-free: weight selection, training state, content classification, inert rendering."""
