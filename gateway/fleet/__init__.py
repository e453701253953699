"""One rollout controller for a fleet of replicas: gates read from Prometheus, steps published in the routing file."""
