"""depthkv: layer-dependent KV-cache budgets."""
