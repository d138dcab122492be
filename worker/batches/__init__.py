"""OpenAI Batch API batches: the input file's rules (`input_lines`), the record and `Batch` view (`record`), the
runner's steps (`runner`) with its scripts (`scripts`), the output lines (`output`), the webhook (`webhook`)."""
