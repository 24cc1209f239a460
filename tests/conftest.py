import os
import sys
from pathlib import Path

# Test helper modules (tiny_models, videos) import by plain name.
sys.path.insert(0, str(Path(__file__).parent))
# Never reach for the hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
