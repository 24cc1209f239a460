"""Every reduction method as pure tensor functions: no model, no transformers, no import from the layers above.

One module per method, with look-alike interfaces: `framefusion` (FrameFusion's merge and prune inside the LLM),
`evs` (Efficient Video Sampling before the LLM), `frame_dedup` (repeated frames before the vision encoder).
`vidcom2`: VidCom2's selection of video tokens before the LLM, as vLLM ships it (the same interface as `evs`).
`fastvid`: FastVID's segmentation, salient tokens and anchor merging before the LLM, as its official code runs them.
`holitom`: HoliTom's static windows, clustered static tokens and most attended others before the LLM (official code).
`earlytom`: EarlyTom's frame merging inside the vision encoder and its token selection after it (official code).
`inner_merge`: HoliTom's and EarlyTom's shared inner-LLM step: keep the most attended video tokens, fold in the rest.
"""
