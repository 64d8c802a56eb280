"""clvtier: predict customer-lifetime-value tiers from e-commerce tables."""

__version__ = "0.1.0"
