"""Marketplace: pricing, reverse auctions with escrow, settlement, revenue distribution."""
