"""Pantheon's learn loop: trace mining, LoRA/QLoRA training, evaluation and promotion.

Headless: never imports Textual. Nothing here talks to a model hub: the base weights are read
from the model file the server runs, so the Hugging Face libraries are kept offline.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
