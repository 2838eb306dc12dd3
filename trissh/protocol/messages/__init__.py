"""SSH messages, one frozen dataclass per RFC message, grouped by protocol layer."""
