"""What users run, on top of the pipeline: bench, calibrate, caption (local and Ray), chat, doctor, and the lmms-eval
model. Each returns data; the CLI renders it."""
