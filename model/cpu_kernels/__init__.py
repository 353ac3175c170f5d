"""Speed work for training on CPU, where PyTorch's own kernels leave most of the time on the table.

Each kernel is used only where `model.attention`, `model.activation` and `model.loss` find a CPU
tensor (and, for attention, bf16 training); every GPU path is the plain PyTorch one.
"""
