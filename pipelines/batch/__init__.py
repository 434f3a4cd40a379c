"""The batch layer: the history pass, the fit, the gate and the schedule."""
