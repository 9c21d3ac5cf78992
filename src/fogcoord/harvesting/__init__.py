"""Harvesting: the device registry, suitability, participant selection, allocation, bursts."""
