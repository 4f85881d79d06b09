"""Task data: cards (``cards``), raw files (``raw``), cleaning (``clean``), splitting (``split``),
preparation (``prepare``, the DVC stage), prepared splits (``prepared``) and batching (``batching``)."""
