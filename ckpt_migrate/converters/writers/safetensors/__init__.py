"""The safetensors writer: streamed byte-range copies, casts, sharded and Hugging Face layouts."""
