"""``meshctl bug-report``: the mesh's state, through the control plane API, in one archive."""
