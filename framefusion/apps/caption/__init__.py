"""Batch captioning to a resumable records file: the folder walk, the records file, the decoder process, the local
loop and the Ray engine."""
