"""Traffic to deployments: weighted split, sticky keys, shadow copies, pinned versions."""
