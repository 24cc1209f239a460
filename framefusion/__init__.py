"""FrameFusion: video token reduction for video LLMs on Hugging Face transformers."""

__version__ = "0.1.0"
