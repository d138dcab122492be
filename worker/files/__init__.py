"""The file store: the bytes of the OpenAI Files and Batch API, shared by every API process and worker.

`store` (the interface and its bookkeeping), `names` (what may name an object), `backend` (what a place
for bytes must offer) with `directory` (the default) and `s3` (an S3-compatible bucket). Start with
`store.open_store(settings)`.
"""
