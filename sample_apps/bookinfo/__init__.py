"""Bookinfo, Istio's sample application, ported to Python and aiohttp."""
