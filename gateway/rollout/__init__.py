"""Progressive delivery: staged rollouts whose gates are always-valid sequential tests."""
