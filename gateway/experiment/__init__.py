"""A/B experiments between a route's versions: feedback joined to the predictions it judges, per-version quality,
a quality alert, and an always-valid sequential test of the primary metric (also a rollout gate)."""
