"""acetrack's benchmark: acetrack against the official SDK's wait loop on one simulated workload (``make bench``)."""
