"""`meshctl demo`: the Bookinfo mesh as local processes (topology, supervisor, traffic)."""
