"""OpenAI Batch API batches: what a batch input file must hold (`input_lines`)."""
