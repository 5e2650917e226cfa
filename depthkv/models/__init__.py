"""The models depthkv loads, and ``load_model``.

* :mod:`~depthkv.models.shipped`: the embedded tiny models (``MODELS``, ``model_dir``), trained
  for the synthetic tasks, shipped inside the package.
* :mod:`~depthkv.models.registry`: the real pretrained models (``REAL_MODELS``), GGUF files
  shipped in packages on the package index, and what to install for them.
* :mod:`~depthkv.models.source`: where a GGUF's bytes are (one file or parts).
* :mod:`~depthkv.models.conversion`: a GGUF into a plain Hugging Face folder.
* :mod:`~depthkv.models.cache`: the converted folders, checked against their GGUF on each load.
* :mod:`~depthkv.models.loading`: ``load_model`` and ``gguf_folder``.

Nothing is downloaded: everything loads with ``local_files_only=True``.
"""

from __future__ import annotations

from depthkv.models.loading import gguf_folder, load_model
from depthkv.models.registry import REAL_MODELS
from depthkv.models.shipped import MODELS, model_dir

__all__ = ["MODELS", "REAL_MODELS", "gguf_folder", "load_model", "model_dir"]
