"""Compression plugins: pruning (torch-pruning) and quantization (torch.ao / torchao PT2E)."""
