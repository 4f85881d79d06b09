"""Tensor-train LoRA: the math (``tensor_train``), its configuration (``config``), one adapted
layer (``layer``) and the injection into a Hugging Face model by module names (``inject``)."""
