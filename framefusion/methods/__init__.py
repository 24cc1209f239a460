"""Every reduction method as pure tensor functions: no model, no transformers, no import from the layers above.

One module per method, with look-alike interfaces: `framefusion` (FrameFusion's merge and prune inside the LLM),
`evs` (Efficient Video Sampling before the LLM), `frame_dedup` (repeated frames before the vision encoder).
"""
