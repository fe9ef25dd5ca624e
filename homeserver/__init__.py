"""A Matrix-compatible, federated, event-sourced chat homeserver."""
