"""Names of the evaluation protocol's choices, without torch: the CLI builds its options from them."""

BATCH_NORM_MODES = ("eval", "batch-stats")  # BatchNorm running statistics, or each batch's own (the notebook)
SOLVERS = ("fast", "sklearn")  # linear probe: zoo's preconditioned L-BFGS-B, or sklearn's LogisticRegression
