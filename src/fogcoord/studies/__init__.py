"""Federated studies: model training rounds across devices, private and robust."""
