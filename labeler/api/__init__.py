"""The OpenAI Files and Batches API over labeler jobs (`llava-labeler api`), and job status for scripts.

`app.build_app` assembles the routes (`files`, `batches`, `jobs`) behind the predictor's guard
(API key, body limit); `app.serve` runs it on uvicorn. Files and batch documents live in a
`FileStore`, never in the database; a batch's status follows its jobs (`batch_records`).
"""
