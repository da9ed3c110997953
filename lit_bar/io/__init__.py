"""Files and the Hugging Face hub: loading models and data from a local folder or the hub
(:mod:`~lit_bar.io.hub`), checkpoints that are whole or refused (:mod:`~lit_bar.io.checkpoints`), and
GPT-2's fused q/k/v projection split for training and fused back for export (:mod:`~lit_bar.io.qkv`).
"""
