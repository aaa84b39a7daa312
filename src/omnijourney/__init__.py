"""omnijourney: one customer, one story, across every channel."""

__version__ = "0.1.0"
