"""The LM-guided CoT flow itself: standard, CoT, LM-guided and self-consistency."""
