"""Pantheon's learn loop: trace mining, LoRA/QLoRA training, evaluation and promotion.

Headless: never imports Textual.
"""
