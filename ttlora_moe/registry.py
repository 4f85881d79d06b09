"""Compatibility for models registered by ttlora-moe 0.1: their MLflow model code imports the pyfunc
classes from ``ttlora_moe.registry``. New registrations import them from :mod:`ttlora_moe.pipeline.pyfunc`."""

from ttlora_moe.pipeline.pyfunc import BundlePyfunc, ExpertPyfunc

__all__ = ["BundlePyfunc", "ExpertPyfunc"]
