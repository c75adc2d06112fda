"""Training algorithms: teacher rationales and filters, SFT pairs, RL losses, rewards, search space."""
