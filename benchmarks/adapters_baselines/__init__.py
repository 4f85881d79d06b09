"""Baselines from the `adapters` library (Pfeiffer bottleneck adapters per task, AdapterFusion).

`adapters` 1.3.0 needs transformers 4.57 while the project pins transformers 5, so the code here
runs in its own virtualenv (`benchmarks/adapters_env.sh` creates `.venv-adapters`) and imports
nothing from `ttlora_moe` or the rest of `benchmarks`. `benchmarks/fusion_vs_moe.py` drives it
from the main virtualenv and reads the JSON it writes.
"""
