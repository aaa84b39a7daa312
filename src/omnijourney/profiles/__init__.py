"""One profile: traits with merge strategies, computed traits, consents; the 360 view and timeline."""
