"""Local differential privacy on the device: noise sources (and, later, the accountant)."""
