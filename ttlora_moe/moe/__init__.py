"""The mixture of experts: router features (``features``, ``feature_cache``, ``block_hooks``), the
router (``router``, ``router_data``), single-pass routing (``single_pass``), mixed-batch inference
(``mixture``), the bundle (``bundle``, ``build``) and its evaluation (``evaluate``, ``plots``)."""
