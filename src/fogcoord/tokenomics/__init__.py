"""Tokenomics: the double-entry ledger, wallets, escrow, payments and mining rewards."""
