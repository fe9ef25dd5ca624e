"""A Matrix-compatible, federated, event-sourced chat homeserver."""

__version__ = "0.1.0"
