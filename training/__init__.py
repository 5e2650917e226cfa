"""The code that trained depthkv's embedded models (``depthkv/models/<name>/``).

Part of the source repository, not of the installed package: run it from the repository root,
``python -m training.train ...`` and ``python -m training.diagnose ...`` (see ``training/README.md``).
"""
