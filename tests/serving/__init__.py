"""depthkv.serving: the engine plan export and its checks, the KV capacity calculator, ``depthkv export``."""
