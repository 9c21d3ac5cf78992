"""Privacy: differential privacy, secure aggregation, Byzantine detection, onion routing."""
