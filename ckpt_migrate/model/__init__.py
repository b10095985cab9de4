"""The data model every reader fills and every writer consumes: Checkpoint, tensor references, dtypes, layout."""
