"""Hooks into Hugging Face models: the FrameFusion runtime (decoder-layer and attention hooks), the prefill
bookkeeping it keeps, the one compatibility seam with transformers' private conventions, device timing and peak
memory. Knows no model family: a family's layout comes in as an object (families/)."""
