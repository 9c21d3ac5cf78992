"""System stats: metrics store, health reports, alerts, exports and the dashboard feed."""
