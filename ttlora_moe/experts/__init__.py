"""One task's expert: the frozen base model (``base_model``), the classifier on top (``classifier``),
training (``training``, ``checkpoint``, ``metrics``), the saved artifact (``artifact``) and the
end-to-end job that trains, tests and saves it (``job``)."""
