"""Drift monitoring: reference profiles, request-path sampling, windowed evaluation, exports and alerts."""
