"""Baselines from the `adapters` library (Pfeiffer bottleneck adapters per task, AdapterFusion).

`adapters` 1.3.0 needs transformers 4.57 while the project pins transformers 5, so `train.py` runs
in its own virtualenv (`benchmarks/adapters_env.sh` creates `.venv-adapters`) and imports nothing
from `ttlora_moe` or the rest of `benchmarks`. `driver.py` is the main-virtualenv side: it creates
that virtualenv, runs `train.py` in it on our experts' budget and data, and reads the JSON it
writes; `benchmarks/peft_quality.py` and `benchmarks/fusion_vs_moe.py` call it.
"""
