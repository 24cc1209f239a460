"""One straight line from a video to an answer: checks before loading (preflight), decoding and sampling, the
profile's stages before the vision encoder, the vision encoder (or the feature cache), the stages before and inside
the LLM, generation; and the result types every application reports."""
