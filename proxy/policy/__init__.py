"""Traffic-policy primitives: pure, I/O-free, clock- and RNG-injected parts of the request stack.

Modules: ``token_bucket`` (rate limits), ``retry_budget``, ``backoff``, ``outlier`` (ejection),
``balancer`` (endpoint choice), ``weighted`` (subset split), ``circuit`` (pool limits) and
``matching`` (route-rule matches). None takes a lock: the proxy runs on one asyncio thread.
"""
