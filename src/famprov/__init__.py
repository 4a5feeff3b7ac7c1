"""famprov: partner provisioning of family plans."""

__version__ = "0.1.0"
