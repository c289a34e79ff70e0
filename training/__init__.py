"""Training recipes for self-supervised encoders (SimCLR, BYOL, Barlow Twins)."""
