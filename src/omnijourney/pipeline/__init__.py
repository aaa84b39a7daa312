"""The processing stage: reads the event log in order from a checkpoint and applies handlers."""
