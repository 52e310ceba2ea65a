"""The comparison wing: agreement reports over engines (gradients, Hessians, Jacobians, fits)
and baselines."""
